"""bench/evaluate.py runs end to end on the tiny size, and both sides find the same log-likelihood."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_evaluate_tiny():
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("bench_evaluate", ROOT / "bench" / "evaluate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--sizes", "tiny", "--seq_length", "32", "--batch_size", "3", "--tokens", "200"])
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[3].startswith("200 ")  # every token scored once
    assert float(cells[-1]) < 1e-5  # ours and transformers' total NLL agree
