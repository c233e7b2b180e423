"""bench/evaluate.py runs end to end on the tiny size, and both sides find the same log-likelihood / answers."""

import os
from pathlib import Path

import pytest
from bench_support import load_bench

from tencentpretrain.hardware import cpu

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TP_SHARED_DIR", ROOT.parent / "shared")) / "data"


def bench_evaluate():
    pytest.importorskip("transformers")
    return load_bench("evaluate")


def test_bench_evaluate_tiny():
    rows = bench_evaluate().main(["--sizes", "tiny", "--seq_length", "32", "--batch_size", "3", "--tokens", "200"])
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[1] for row in cells] == (["fp32", "bf16"] if cpu().bf16 else ["fp32"])  # side by side
    assert all(row[4].startswith("200 ") for row in cells)  # every token scored once
    assert float(cells[0][-1]) < 1e-5  # ours and transformers' total NLL agree in fp32
    assert all(float(row[-1]) < 1e-2 for row in cells)  # and within bf16's rounding in bf16


@pytest.mark.skipif(not (SHARED / "tokenizers" / "llama_tokenizer.model").exists(), reason="../shared is absent")
def test_bench_evaluate_choice_tiny():
    rows = bench_evaluate().main(["--choice", "--sizes", "tiny", "--questions", "5", "--shots", "2",
                                  "--batch_size", "2"])
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[-1] == "True"  # transformers, our whole prompts and --task choice give the same answers
