"""``python -m tencentpretrain.env``: the bug report names the versions, the CPU's features and the native kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from tencentpretrain.hardware import cpu


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tencentpretrain.env", *args], capture_output=True, text=True,
                          timeout=300, check=True)
    return done.stdout


def test_text_report():
    out = run()
    assert f"torch: {metadata.version('torch')}" in out and "transformers: " in out and "llama-cpp-python: " in out
    assert f"CPU: {cpu().kind()}" in out and "native decoding kernel: " in out and "GPUs: " in out
    assert "torch build: BLAS " in out


def test_json_report():
    data = json.loads(run("--json"))
    assert data["cpu"]["features"] == cpu().features() and data["cpu"]["amx"] == cpu().amx
    assert data["versions"]["torch"] == metadata.version("torch")
    assert set(data["versions"]) >= {"transformers", "deepspeed", "sentencepiece", "llama-cpp-python", "gguf",
                                     "lm-eval"}
    native = data["native_kernel"]
    assert native["works"] is True or native["why"]
    assert data["llama_cpp_repack_auto"] == ("off (AMX)" if cpu().amx else "on")
