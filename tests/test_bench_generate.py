"""bench/generate.py runs end to end on the tiny size with each layout, and both sides make the same tokens."""

from pathlib import Path

import pytest
from bench_support import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_generate_tiny():
    pytest.importorskip("transformers")
    bench = load_bench("generate")
    layouts = ["column", "packed"] if bench.packing_available() else ["column"]
    rows = bench.main(["--sizes", "tiny", "--batches", "1", "3", "--new_tokens", "4", "--repeats", "1",
                       "--layout", *layouts, "auto"])
    assert len(rows) == 2 * (len(layouts) + 1)
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert all(row[-1] == "True" for row in cells)  # same greedy tokens as transformers
    assert [row[2] for row in cells if row[1] == "1"][-1] == "column"  # auto at batch 1
    assert {row[2] for row in cells} == set(layouts)
