"""Exact resume: SIGKILL mid-run then --resume gives the uninterrupted run's losses; a kill while saving is harmless."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from train_support import ROOT, load_script, losses, make_dataset, subprocess_env, train_argv, write_config

from tencentpretrain.cli import run_cli
from tencentpretrain.training import checkpointing
from tencentpretrain.training.plain_engine import PlainEngine

PRETRAIN = load_script("pretrain")
STEPS, SAVE = 150, 20


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_spm):
    folder = tmp_path_factory.mktemp("train_resume")
    return folder, make_dataset(folder, tiny_spm), tiny_spm, write_config(folder, dropout=0.1)


def launch(argv):
    return subprocess.Popen([sys.executable, str(ROOT / "pretrain.py"), *argv], env=subprocess_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_to_end(argv) -> None:
    proc = launch(argv)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def test_sigkill_then_resume_gives_identical_losses(setting):
    folder, dataset, spm, config = setting  # dropout on: the RNG state must be restored too
    whole = folder / "whole" / "m"
    run_to_end(train_argv(dataset, spm, config, whole, steps=STEPS, save=SAVE))

    killed = folder / "killed" / "m"
    argv = train_argv(dataset, spm, config, killed, steps=STEPS, save=SAVE)
    proc = launch(argv)
    deadline = time.monotonic() + 300
    while not (killed / "latest").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    stopped_at = int((killed / "latest").read_text())
    assert stopped_at < STEPS and not killed.with_name("m.bin").exists()

    run_to_end([*argv, "--resume"])
    assert losses(killed.with_name("m-log.jsonl")) == losses(whole.with_name("m-log.jsonl"))
    a = torch.load(whole.with_name("m.bin"), weights_only=True)
    b = torch.load(killed.with_name("m.bin"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_while_saving_leaves_the_previous_state_usable(setting, monkeypatch):
    folder, dataset, spm, config = setting
    whole = folder / "whole_inproc" / "m"
    assert PRETRAIN.main(train_argv(dataset, spm, config, whole, steps=12, save=4)) == 0

    out = folder / "dies_saving" / "m"
    argv = train_argv(dataset, spm, config, out, steps=12, save=4)
    original = PlainEngine.save

    def dies_at_step_8(self, directory):
        if directory.name == ".tmp-8":
            (directory / "engine.pt").write_bytes(b"half a file")
            raise KeyboardInterrupt  # the process dies here
        original(self, directory)

    monkeypatch.setattr(PlainEngine, "save", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        PRETRAIN.main(argv)
    assert (out / "latest").read_text().strip() == "4"
    assert checkpointing.latest_state(out) == out / "4"
    assert (out / ".tmp-8").exists() and not (out / "8").exists()
    monkeypatch.setattr(PlainEngine, "save", original)

    assert PRETRAIN.main([*argv, "--resume"]) == 0
    assert losses(out.with_name("m-log.jsonl")) == losses(whole.with_name("m-log.jsonl"))
    assert not (out / ".tmp-8").exists() and (out / "latest").read_text().strip() == "12"


def test_resume_without_a_state_says_where_it_looked(setting, tmp_path, capsys):
    folder, dataset, spm, config = setting
    assert run_cli(PRETRAIN.main, [*train_argv(dataset, spm, config, tmp_path / "m"), "--resume"]) == 1
    assert str(tmp_path / "m" / "latest") in capsys.readouterr().err
