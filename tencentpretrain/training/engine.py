"""The one engine interface the loop uses, over one backend per engine: plain PyTorch (one process or DDP,
``plain_engine.py``) and DeepSpeed (``deepspeed_engine.py``), so the loop has no branches.

The loop calls, per micro-batch, ``loss, metrics = engine.forward(batch.inputs(), boundary)`` and
``engine.backward(loss)``, and at the accumulation boundary ``engine.step()``, which clips, steps the optimizer and
the schedule, and reports the gradient norm and whether the step was skipped because it was not finite.
``engine.export(dtype)`` gathers the full model for a checkpoint (rank 0 gets it, LoRA adapters merged and also
returned apart; others None); ``engine.save(dir)`` / ``engine.load(dir)`` write and read the optimizer-side
training state. Each backend's ``build(opts, setup, info, trace)`` builds its model (``model_setup.py``), optimizer
and schedule from the run's options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.lora import LoraConfig, is_lora_name, lora_state_dict, merge_lora_state

if TYPE_CHECKING:
    from tencentpretrain.training.memory import MemoryTrace
    from tencentpretrain.training.model_setup import ModelSetup
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
class ModelExport:
    """What a checkpoint writes of the model: the consolidated state dict (LoRA adapters merged into their base
    weights) and, for a LoRA run, the adapter's own tensors and settings."""

    state: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor] | None = None
    lora: LoraConfig | None = None


class Engine:
    """The interface the loop uses. Backends: ``PlainEngine`` (plain_engine.py), ``DeepSpeedEngine``
    (deepspeed_engine.py)."""

    model: nn.Module  # the unwrapped model (parameter names as in TencentPretrain checkpoints)
    dist: DistInfo
    lora: LoraConfig | None = None  # the run's LoRA settings, when it trains adapters

    @classmethod
    def build(cls, opts: TrainOptions, setup: ModelSetup, info: DistInfo, trace: MemoryTrace | None = None) -> Engine:
        """The engine over the model ``setup`` describes (built as this backend needs it), with the optimizer and
        schedule of the run's options."""
        raise NotImplementedError

    def export(self, dtype: torch.dtype) -> ModelExport | None:
        """The model for a checkpoint, at ``dtype``, on rank 0 (None elsewhere; a collective under ZeRO-3)."""
        state = self.consolidated_state_dict(dtype)
        if state is None or self.lora is None:
            return None if state is None else ModelExport(state)
        adapter = {name: state[name] for name in lora_state_dict(self.model)}
        base = {name: tensor for name, tensor in state.items() if not is_lora_name(name)}
        return ModelExport(merge_lora_state(base, adapter, self.lora.rank, self.lora.alpha), adapter, self.lora)

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

    def consolidated_state_dict(self, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
