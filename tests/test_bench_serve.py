"""bench/serve.py and bench/threads.py run end to end on the tiny size (no timing is checked, only that every
request was answered and every variant made the same tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_support import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_serve_compares_and_soaks(tiny_spm, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    serve = load_bench("serve")
    common = ["--size", "tiny", "--spm_model_path", str(tiny_spm), "--clients", "3", "--prompt_tokens", "4", "40",
              "--max_tokens", "2", "12", "--threads", "1", "--seq_length", "128"]
    assert serve.main(common + ["--requests", "6", "--batch_sizes", "3", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| --max_batch_size")]
    assert len(rows) == 2 and all(row.split("|")[3].strip() == "6" for row in rows)  # 6 requests each
    assert all(row.split("|")[-2].strip() == "0" for row in rows)  # no errors
    assert "--max_batch_size 3 vs 1: tokens/s" in out
    assert serve.main(common + ["--soak", "4", "--batch_sizes", "2"]) == 0
    assert "errors = 0" in capsys.readouterr().out


def test_bench_threads_makes_the_same_tokens():
    from tencentpretrain.generation import native

    try:
        native.load_library()
    except native.Unsupported as why:
        pytest.skip(f"native decoding unavailable here: {why}")
    threads = load_bench("threads")
    (row,) = threads.main(["--sizes", "tiny", "--new_tokens", "4", "--repeats", "1", "--threads", "2"])
    assert row.strip("| ").endswith("True")
