"""bench/train.py runs end to end on a tiny config; its first-loss check ties our model to transformers' Llama."""

from pathlib import Path

import pytest
from bench_support import load_bench

ROOT = Path(__file__).resolve().parents[1]




def test_bench_train_tiny(capsys):
    pytest.importorskip("transformers")
    bench = load_bench("train")
    argv = ["--config", str(ROOT / "models" / "llama" / "tiny_config.json"), "--vocab_size", "64",
            "--batch_size", "2", "--seq_length", "16", "--rounds", "2", "--steps", "1", "--warmup", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    ours, theirs = (float(part.split()[-1]) for part in out.split("first-step loss: ")[1].split("\n")[0].split(", "))
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert "ratio ours/transformers" in out and "MFU" in out
    assert sum(line.startswith("round ") for line in out.splitlines()) == 2
