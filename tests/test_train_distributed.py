"""torchrun (DDP, gloo) and deepspeed ZeRO-3 on 2 CPU ranks: same losses as one process with the same global batch,
consolidated outputs that load directly, and DeepSpeed resume."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_support import ROOT, losses, make_dataset, subprocess_env, train_argv, write_config

from tencentpretrain import load_model

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_spm):
    folder = tmp_path_factory.mktemp("train_dist")
    dataset, config = make_dataset(folder, tiny_spm), write_config(folder)
    single = folder / "single" / "m"  # the reference: one process, batch 8 = 2 ranks x 4
    run([sys.executable, "pretrain.py"], train_argv(dataset, tiny_spm, config, single, steps=STEPS, save=2, batch=8))
    return folder, dataset, tiny_spm, config, single


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(launcher: list[str], argv: list[str]) -> str:
    proc = subprocess.run([*launcher, *argv], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_matches_single(out, single, tolerance: float) -> None:
    mine, reference = losses(out.with_name("m-log.jsonl")), losses(single.with_name("m-log.jsonl"))
    assert sorted(mine) == list(range(1, STEPS + 1))
    assert all(abs(mine[s] - reference[s]) < tolerance for s in reference), (mine, reference)
    a = torch.load(out.with_name("m.bin"), weights_only=True)
    b = torch.load(single.with_name("m.bin"), weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_torchrun_two_ranks_match_one_process(setting):
    folder, dataset, spm, config, single = setting
    out = folder / "ddp" / "m"
    torchrun = [shutil.which("torchrun", path=subprocess_env()["PATH"]), "--standalone", "--nproc_per_node", "2"]
    log = run(torchrun, ["pretrain.py", *train_argv(dataset, spm, config, out, "--world_size", "8", steps=STEPS,
                                                     save=2, batch=4)])
    assert "--world_size 8 ignored" in log
    assert_matches_single(out, single, 1e-5)
    model = load_model(config, out.with_name("m.bin"))
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]]))).all()
    assert sorted(p.name for p in (out / "2").iterdir()) == ["engine.pt", "rank0.pt", "rank1.pt"]


def test_deepspeed_zero3_two_ranks_consolidated_output_and_resume(setting):
    folder, dataset, spm, config, single = setting
    out = folder / "zero3" / "m"
    port = free_port()
    deepspeed = [shutil.which("deepspeed", path=subprocess_env()["PATH"]), "--master_port", str(port),
                 "--num_gpus", "2", "pretrain.py"]
    argv = train_argv(dataset, spm, config, out, "--deepspeed", "--enable_zero3", "--deepspeed_config",
                      str(ROOT / "models" / "deepspeed_zero3_config.json"), steps=STEPS, save=2, batch=4)
    log = run(deepspeed, argv)
    # DeepSpeed's CPU all-reduce maps a 64 MiB buffer per rank from /dev/shm and leaves its name behind: we unlink it
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert "bf16 disabled: no CUDA device" in log or torch.cuda.is_available()
    assert_matches_single(out, single, 1e-5)
    model = load_model(config, out.with_name("m.bin"))  # consolidated: no zero_to_fp32 step
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]]))).all()

    first = losses(out.with_name("m-log.jsonl"))
    first_weights = torch.load(out.with_name("m.bin"), weights_only=True)
    run(deepspeed[:2] + [str(free_port())] + deepspeed[3:], [*argv, "--resume_from_checkpoint", str(out / "2")])
    again = losses(out.with_name("m-log.jsonl"))
    assert sorted(again) == list(range(1, STEPS + 1))
    assert all(abs(again[s] - first[s]) < 1e-5 for s in first)
    weights = torch.load(out.with_name("m.bin"), weights_only=True)
    assert all(torch.allclose(weights[k], first_weights[k], atol=1e-5) for k in weights)


def test_deepspeed_watchdog_skips_then_stops(setting):
    folder, dataset, spm, config, _ = setting
    out = folder / "zero3_nan" / "m"
    command = [shutil.which("deepspeed", path=subprocess_env()["PATH"]), "--master_port", str(free_port()),
               "--num_gpus", "2", "pretrain.py", *train_argv(dataset, spm, config, out, "--deepspeed", "--enable_zero3",
                                                             "--deepspeed_config",
                                                             str(ROOT / "models" / "deepspeed_zero3_config.json"),
                                                             "--max_skipped_steps", "2", steps=10, save=10,
                                                             batch=4, lr=float("inf"))]
    proc = subprocess.run(command, env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "--max_skipped_steps 2" in proc.stdout + proc.stderr
    assert "step 2: non-finite loss" in proc.stdout + proc.stderr
    assert not out.with_name("m.bin").exists()


def test_lora_under_zero3_matches_one_process(setting):
    folder, dataset, spm, config, _ = setting
    lora = ("--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--lora_target_modules",
            "linear_layers.*")  # no dropout: its masks differ between one batch of 8 and two of 4
    single = folder / "lora_single" / "m"
    run([sys.executable, "pretrain.py"], train_argv(dataset, spm, config, single, *lora, steps=STEPS, save=STEPS,
                                                    batch=8))
    out = folder / "lora_zero3" / "m"
    deepspeed = [shutil.which("deepspeed", path=subprocess_env()["PATH"]), "--master_port", str(free_port()),
                 "--num_gpus", "2", "pretrain.py"]
    run(deepspeed, train_argv(dataset, spm, config, out, *lora, "--deepspeed", "--enable_zero3", "--deepspeed_config",
                              str(ROOT / "models" / "deepspeed_zero3_config.json"), steps=STEPS, save=STEPS, batch=4))
    assert_matches_single(out, single, 1e-5)
    adapter = torch.load(out.with_name("m-lora.bin"), weights_only=True)
    assert adapter and all(".lora_" in name for name in adapter)
    assert torch.isfinite(load_model(config, out.with_name("m.bin"))(torch.tensor([[1, 5, 9]]))).all()
