"""bench/train.py runs end to end on a tiny config; its first-loss check ties our model to transformers' Llama."""

from pathlib import Path

import pytest
from bench_support import load_bench

from tencentpretrain.hardware import cpu

ROOT = Path(__file__).resolve().parents[1]




def test_bench_train_tiny(capsys):
    """Every dtype the machine has bf16 hardware for (fp32 always), measured in turn, then side by side."""
    pytest.importorskip("transformers")
    bench = load_bench("train")
    argv = ["--config", str(ROOT / "models" / "llama" / "tiny_config.json"), "--vocab_size", "64",
            "--batch_size", "2", "--seq_length", "16", "--rounds", "2", "--steps", "1", "--warmup", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    dtypes = ["fp32", "bf16"] if cpu().bf16 else ["fp32"]
    first = out.split("first-step loss: ")[1].split("\n")[0]  # fp32's: the models must agree closely
    ours, theirs = (float(part.split()[-1]) for part in first.split(", "))
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert "ratio ours/transformers" in out and "MFU" in out
    assert sum(line.startswith("round ") for line in out.splitlines()) == 2 * len(dtypes)
    assert f"machine: {cpu().kind()}" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| dtype")]
    assert [row.split("|")[1].strip() for row in rows] == dtypes
    assert ("bf16/fp32: ours" in out) == (len(dtypes) == 2)
