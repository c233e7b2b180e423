"""The commands users type from the repository root start without any path set up for them: the package comes from
its installation (``scripts/setup_env.sh`` installs it editable), the benchmarks run as ``python -m bench.NAME``,
and no script or test edits ``sys.path``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [  # one of each folder
    ["pretrain.py"],
    ["preprocess.py"],
    ["scripts/convert_llama_from_huggingface_to_tencentpretrain.py"],
    ["inference/run_llama.py"],
    ["-m", "bench.train"],
]


def clean_env() -> dict[str, str]:
    """The environment without ``PYTHONPATH`` when that imports this checkout's package (an installed clone);
    else (a second checkout, such as a git worktree, beside the installed one) ``PYTHONPATH`` naming only this
    checkout, so that the commands run this checkout's code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import tencentpretrain; print(tencentpretrain.__file__)"],
                           env=env, cwd="/", capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 or not Path(probe.stdout.strip()).resolve().is_relative_to(ROOT):
        env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c[-1] for c in COMMANDS])
def test_command_starts_from_the_repository_root(command):
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]


def test_nothing_edits_sys_path():
    pattern = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("tencentpretrain", "scripts", "inference", "bench", "tests", "examples")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if pattern.search(line) and path != Path(__file__).resolve()]
    found += [p for p in ("pretrain.py", "preprocess.py") if pattern.search((ROOT / p).read_text(encoding="utf-8"))]
    assert found == []
