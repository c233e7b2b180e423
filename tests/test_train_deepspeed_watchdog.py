"""The DeepSpeed engine's NaN/inf watchdog on 2 CPU ranks (gloo, ZeRO-3): a non-finite gradient with a finite loss
is a skipped step that leaves the weights alone and keeps the schedule in step with the plain engine."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
from train_support import MICRO_LLAMA

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")

CONFIG = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
          "zero_force_ds_cpu_optimizer": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    from tencentpretrain import ModelConfig, build_model
    from tencentpretrain.training.deepspeed_engine import DeepSpeedEngine, partitioned_build
    from tencentpretrain.training.distributed import DistInfo, end_process, leave_distributed
    from tencentpretrain.training.optim import build_adamw, build_scheduler, param_groups
    from tencentpretrain.training.weights import init_partitioned

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    with partitioned_build(CONFIG, enabled=True):
        model = build_model(ModelConfig.from_dict(MICRO_LLAMA), 100)
    init_partitioned(model)
    groups = param_groups(model, 0.0)
    optimizer = build_adamw(groups, 1.0, (0.9, 0.999), 1e-8, torch.device("cpu"))
    engine = DeepSpeedEngine(model, optimizer, lambda opt: build_scheduler(opt, "constant", 4, 8), CONFIG, groups,
                             DistInfo(rank=rank, world_size=world))
    ids = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(rank))
    weight = model.encoder.transformer[0].feed_forward.linear_1.weight
    results, lrs = [], []
    for step in range(3):
        handle = weight.register_hook(lambda grad: grad * math.nan) if step == 1 and rank == 1 else None
        loss, _ = engine.forward({"src": ids[:, :-1], "tgt": ids[:, 1:]}, boundary=True)
        assert math.isfinite(loss.item())  # only the gradient is poisoned, on one rank
        engine.backward(loss)
        before = [p.ds_tensor.detach().clone() for p in model.parameters()]
        lrs.append(engine.lr)
        results.append(engine.step())
        unchanged = all(torch.equal(a, p.ds_tensor) for a, p in zip(before, model.parameters()))
        assert unchanged == (step == 1), step
        if handle is not None:
            handle.remove()
    assert [r.skipped for r in results] == [False, True, False], results
    assert not any(r.scale_overflow for r in results)
    assert math.isfinite(results[0].grad_norm) and math.isfinite(results[2].grad_norm)
    assert lrs == pytest.approx([0.25, 0.5, 0.75])  # warmup over 4 steps: the schedule advanced on the skip
    assert all(torch.isfinite(p.ds_tensor).all() for p in model.parameters())
    leave_distributed()
    end_process(0)  # the native teardown at exit sometimes aborts a finished rank (SIGABRT)


def test_non_finite_gradient_with_finite_loss_is_skipped():
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port()), nprocs=2, join=True)
