"""AdamW with weight-decay groups by rule, and the torch scheduler following a registered schedule
(``schedules.py``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from tencentpretrain.errors import InputError
from tencentpretrain.registry import SCHEDULERS
from tencentpretrain.training.options import TrainOptions
from tencentpretrain.training.schedules import warmup_steps_of


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
    """``torch.optim.AdamW`` with its fused kernel where the device has one (CUDA, and CPUs since torch 2.4), else
    the foreach implementation (docs/benchmarks.md, "Training speed", compares them)."""
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
