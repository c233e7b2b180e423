"""bench/sampling.py runs on the tiny size: both samplers keep the same tokens for every setting, and the decoding
table has both of ours (no timing is checked)."""

from __future__ import annotations

from pathlib import Path

from bench_support import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sampling_runs(capsys):
    module = load_bench("sampling")
    module.main(["--size", "tiny", "--vocab", "3000", "--repeats", "1", "--new_tokens", "4", "--threads", "1",
                 "--no_llama_cpp"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    per_call = [row for row in rows if len(row) == 6 and row[1].strip() in ("1", "8")]
    assert len(per_call) == 2 * len(module.SETTINGS)
    assert all(row[5].strip() == "True" for row in per_call)
    decoding = [row[0].strip() for row in rows if len(row) == 4 and row[1].strip() == "1"]
    assert decoding == ["ours, sampler before", "ours, sampler now"]
