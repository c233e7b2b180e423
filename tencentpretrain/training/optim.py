"""AdamW with weight-decay groups by rule, and learning-rate schedules with warmup from the SCHEDULERS registry.

A schedule is a function ``(step, warmup_steps, total_steps) -> factor`` registered by name; the learning rate at
optimizer step ``step`` (0-based) is ``learning_rate * factor``. ``--scheduler`` offers ``SCHEDULERS.names()``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from tencentpretrain.cli import InputError
from tencentpretrain.registry import SCHEDULERS

if TYPE_CHECKING:  # options.py imports this module to register the schedules
    from tencentpretrain.training.options import TrainOptions


def _warmup(step: int, warmup_steps: int) -> float | None:
    """The warmup factor while warming up (linear from 1/warmup to 1), else None."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


@SCHEDULERS.register("constant")
def constant_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup, then the full learning rate."""
    warm = _warmup(step, warmup_steps)
    return 1.0 if warm is None else warm


@SCHEDULERS.register("linear")
def linear_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup, then linear decay to zero at ``total_steps``."""
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


@SCHEDULERS.register("cosine")
def cosine_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup, then half a cosine down to zero at ``total_steps``."""
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(warmup: float, total_steps: int) -> int:
    """TencentPretrain's ``--warmup``: a fraction of ``total_steps`` when below 1, else a number of steps."""
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}")
    return int(total_steps * warmup) if warmup < 1 else int(warmup)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following the registered schedule ``name``; call ``.step()`` once per optimizer step."""
    schedule = SCHEDULERS.get(name)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, warmup_steps, total_steps))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices (``dim >= 2``) decay, vectors (norms, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("no trainable parameters: every parameter is frozen")
    decay = [p for p in params if _ndim(p) >= 2]
    no_decay = [p for p in params if _ndim(p) < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _ndim(param: torch.Tensor) -> int:
    """Dimensions of a parameter, also when ZeRO-3 has partitioned it (``ds_shape`` keeps the full shape)."""
    return len(param.ds_shape) if hasattr(param, "ds_shape") else param.dim()


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                device: torch.device) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel where the device has one (CUDA, and CPUs since torch 2.4:
    several times faster than the per-tensor loop), else the foreach implementation."""
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "xpu", "mps", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except RuntimeError:  # this torch has no fused kernel for the device
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def adamw_of(opts: TrainOptions, groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """``build_adamw`` with the run's ``--learning_rate``, ``--adam_beta1/2`` and ``--adam_eps``."""
    return build_adamw(groups, opts.learning_rate, (opts.adam_beta1, opts.adam_beta2), opts.adam_eps, device)


def scheduler_of(opts: TrainOptions) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """Builds the run's schedule (``--scheduler``, ``--warmup``, ``--total_steps``) over a given optimizer."""
    warmup = warmup_steps_of(opts.warmup, opts.total_steps)

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return build_scheduler(optimizer, opts.scheduler, warmup, opts.total_steps)

    return build
