"""ZeRO-3 building and loading on 2 CPU ranks (gloo): parameters are partitioned as they are built, a pretrained
checkpoint that only rank 0 reads is scattered into the partitions without gathering any parameter, and
pretrain.py under deepspeed loads it exactly (and refuses a misfitting one on every rank)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import torch
from torch import nn
from train_support import ROOT, make_dataset, subprocess_env, train_argv, write_config

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import save_state_dict

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Odd(nn.Module):
    """Parameters whose sizes (21, 15, 5, 1) do not split evenly over 2 ranks: the padded last partition."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(7, 3)
        self.linear = nn.Linear(3, 5)
        self.scale = nn.Parameter(torch.ones(1))


def reference_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    shapes = {"embedding.weight": (7, 3), "linear.weight": (5, 3), "linear.bias": (5,), "scale": (1,)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def expected_partition(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    size = -(-full.numel() // world)
    flat = torch.cat([full.reshape(-1), full.new_zeros(size * world - full.numel())])
    return flat[rank * size:(rank + 1) * size]


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed as ds
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from tencentpretrain.training import deepspeed_engine, weights
    from tencentpretrain.training.distributed import DistInfo, end_process, leave_distributed

    ds.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with deepspeed_engine.partitioned_build(config, enabled=True):
        model = Odd()
    for name, param in model.named_parameters():  # partitioned when built: no rank keeps the full tensor
        assert param.numel() == 0 and param.ds_tensor.numel() == -(-param.ds_numel // world), name

    def no_gathering(*args, **kwargs):
        raise AssertionError("a parameter was gathered while loading")

    weights.gathered = no_gathering  # this process only
    state = reference_state()
    info = DistInfo(rank=rank, world_size=world)
    weights.load_partitioned(model, state if rank == 0 else None, info)
    for name, param in model.named_parameters():
        assert param.ds_status == ZeroParamStatus.NOT_AVAILABLE and param.numel() == 0, name
        torch.testing.assert_close(param.ds_tensor, expected_partition(state[name], rank, world), rtol=0, atol=0)

    torch.manual_seed(3)  # initialisation: the same numbers as one process drawing with the same seed
    weights.init_partitioned(model)
    plain = Odd()
    torch.manual_seed(3)
    for param in plain.parameters():
        if param.dim() >= 2:
            param.data.normal_(0.0, 0.02)
    for (name, param), reference in zip(model.named_parameters(), plain.parameters(), strict=True):
        expected = reference if reference.dim() >= 2 else state[name]
        torch.testing.assert_close(param.ds_tensor, expected_partition(expected.detach(), rank, world), rtol=0,
                                   atol=0)
    leave_distributed()
    end_process(0)  # the native teardown at exit sometimes aborts a finished rank (SIGABRT)


def test_partitioned_build_and_scatter_loading_without_gathering():
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port()), nprocs=2, join=True)


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_spm):
    folder = tmp_path_factory.mktemp("zero3_loading")
    dataset, config = make_dataset(folder, tiny_spm, lines=200), write_config(folder)
    torch.manual_seed(11)
    model = build_model(ModelConfig.from_json(config), 400)
    save_state_dict(model.state_dict(), folder / "pretrained.bin")
    return folder, dataset, tiny_spm, config


def run_zero3(folder, dataset, spm, config, name, pretrained) -> subprocess.CompletedProcess:
    command = [shutil.which("deepspeed", path=subprocess_env()["PATH"]), "--master_port", str(free_port()),
               "--num_gpus", "2", "pretrain.py"]
    argv = train_argv(dataset, spm, config, folder / name / "m", "--deepspeed", "--enable_zero3",
                      "--deepspeed_config", str(ROOT / "models" / "deepspeed_zero3_config.json"),
                      "--pretrained_model_path", str(pretrained), steps=1, save=1, batch=2, lr=0.0)
    return subprocess.run([*command, *argv], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_zero3_pretrain_loads_the_checkpoint_exactly(setting):
    folder, dataset, spm, config = setting
    proc = run_zero3(folder, dataset, spm, config, "exact", folder / "pretrained.bin")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = torch.load(folder / "exact" / "m.bin", weights_only=True)  # learning rate 0: the weights unchanged
    pretrained = torch.load(folder / "pretrained.bin", weights_only=True)
    assert saved.keys() == pretrained.keys()
    for name, tensor in pretrained.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)


def test_zero3_refuses_a_misfitting_checkpoint_without_hanging(setting):
    folder, dataset, spm, config = setting
    state = torch.load(folder / "pretrained.bin", weights_only=True)
    state["encoder.layer_norm.weight"] = torch.ones(65)
    save_state_dict(state, folder / "misfit.bin")
    proc = run_zero3(folder, dataset, spm, config, "misfit", folder / "misfit.bin")
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "tensor encoder.layer_norm.weight: checkpoint has shape [65]" in log, log[-3000:]
