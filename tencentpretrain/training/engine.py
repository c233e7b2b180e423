"""The one engine interface the loop uses, over one backend per engine: plain PyTorch (one process or DDP,
``plain_engine.py``) and DeepSpeed (``deepspeed_engine.py``), so the loop has no branches.

The loop calls, per micro-batch, ``loss, metrics = engine.forward(batch.inputs(), boundary)`` and
``engine.backward(loss)``, and at the accumulation boundary ``engine.step()``, which clips, steps the optimizer and
the schedule, and reports the gradient norm and whether the step was skipped because it was not finite.
``engine.export(dtype)`` gathers the full model's state dict for a checkpoint (rank 0 gets it, others None);
``engine.save(dir)`` / ``engine.load(dir)`` write and read the optimizer-side training state.

An engine does not build the model: the assembly (``build.py``) asks the backend how it wants the model built
(``plan``: the context the parameters are created in, DeepSpeed's ``zero.Init`` under ZeRO-3, and the heap policy),
builds it (``model_setup.py``) and hands it to the backend's ``build``, which adds the optimizer and schedule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tencentpretrain.training.distributed import DistInfo

if TYPE_CHECKING:
    from tencentpretrain.training.options import TrainOptions


@dataclass(frozen=True)
class StepResult:
    """What an optimizer step did.

    Attributes:
        grad_norm: the gradient norm before clipping (not finite when the step was skipped for it).
        skipped: the optimizer did not update the weights (a non-finite loss or gradient).
        scale_overflow: the skip was fp16 loss scaling's: the scaled gradients overflowed and the scale was
            lowered. Expected now and then; it does not count towards ``--max_skipped_steps``.
    """

    grad_norm: float
    skipped: bool
    scale_overflow: bool = False


class LossModule(nn.Module):
    """Wraps a model so that its forward returns ``model.loss(inputs)``: what DDP and DeepSpeed wrap (they move
    and hook keyword tensors as they do positional ones)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(inputs)


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to ``dtype`` on the CPU (tied tensors stay shared); others unchanged."""
    cast: dict[tuple[int, int], torch.Tensor] = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in cast:
            tensor = tensor.detach()
            cast[key] = tensor.to("cpu", dtype) if tensor.is_floating_point() else tensor.to("cpu")
        out[name] = cast[key]
    return out


@dataclass(frozen=True)
class BuildPlan:
    """How a backend wants the run's model built (``Engine.plan``).

    Attributes:
        context: the context the model's parameters are created in (DeepSpeed's ``zero.Init`` partitions them as
            they are created under ZeRO-3).
        heap: the context around building and filling the model (the backend's memory policy).
    """

    context: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    heap: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)


class Engine:
    """The interface the loop uses. Backends: ``PlainEngine`` (plain_engine.py), ``DeepSpeedEngine``
    (deepspeed_engine.py)."""

    model: nn.Module  # the unwrapped model (parameter names as in TencentPretrain checkpoints)
    dist: DistInfo

    @classmethod
    def plan(cls, opts: TrainOptions, info: DistInfo) -> BuildPlan:
        """How this backend wants the model built (default: whole, in ordinary memory)."""
        return BuildPlan()

    @classmethod
    def build(cls, opts: TrainOptions, model: nn.Module, info: DistInfo, plan: BuildPlan) -> Engine:
        """The engine around ``model`` (built as ``plan`` said), with the optimizer and schedule of the run's
        options."""
        raise NotImplementedError

    def export(self, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
        """The model's full state dict for a checkpoint, at ``dtype`` on the CPU, on rank 0 (None elsewhere; a
        collective under ZeRO-3)."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor], boundary: bool):
        """Loss and metrics of one micro-batch (``Batch.inputs()``); ``boundary``: the optimizer steps after it."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> StepResult:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
