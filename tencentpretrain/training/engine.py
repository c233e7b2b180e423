"""One small engine interface over plain PyTorch (one process or DDP) and DeepSpeed, so the loop has no branches.

The loop calls, per micro-batch, ``loss, metrics = engine.forward(src, tgt, boundary)`` and
``engine.backward(loss)``, and at the accumulation boundary ``engine.step()``, which clips, steps the optimizer and
the schedule, and reports the gradient norm and whether the step was skipped because it was not finite.
``engine.consolidated_state_dict(dtype)`` gathers the full model (rank 0 gets it, others None);
``engine.save(dir)`` / ``engine.load(dir)`` write and read the optimizer-side training state.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.dtypes import DTYPES


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over all ranks (float64 on the CPU side; a collective: every rank must call it)."""
        if self.world_size == 1:
            return list(values)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


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
    """Wraps a model so that its forward returns ``model.loss(src, tgt)``: what DDP and DeepSpeed wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(src, tgt)


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


class Engine:
    """The interface the loop uses. Subclasses: ``PlainEngine`` here, ``DeepSpeedEngine`` in deepspeed_engine."""

    model: nn.Module  # the unwrapped model (parameter names as in TencentPretrain checkpoints)
    dist: DistInfo

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, boundary: bool):
        """Loss and metrics of one micro-batch; ``boundary``: the optimizer steps after this one."""
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


class PlainEngine(Engine):
    """PyTorch AdamW on one process, or DDP over several; autocast and GradScaler for fp16/bf16 on GPUs.

    Args:
        model: the model, already on its device.
        optimizer: built over ``model``'s trainable parameters.
        scheduler: stepped once per optimizer step (also when the step is skipped).
        dist_info: rank, world size and device.
        precision: "fp32", "fp16" or "bf16".
        accumulation_steps: micro-batches per step (the loss is divided by it).
        max_grad_norm: clip threshold (0: no clipping, the norm is still measured).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, dist_info: DistInfo,
                 precision: str = "fp32", accumulation_steps: int = 1, max_grad_norm: float = 1.0):
        self.model, self.optimizer, self.scheduler, self.dist = model, optimizer, scheduler, dist_info
        self.accumulation_steps, self.max_grad_norm = accumulation_steps, max_grad_norm
        self.dtype = DTYPES[precision]
        self.scaler = torch.amp.GradScaler(dist_info.device.type, enabled=precision == "fp16")
        self.wrapped: nn.Module = LossModule(model)
        if dist_info.world_size > 1:
            ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.wrapped, device_ids=ids)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def forward(self, src, tgt, boundary):
        if isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            self.wrapped.require_backward_grad_sync = boundary  # what no_sync() does, without a context
        autocast = torch.autocast(self.dist.device.type, dtype=self.dtype) if self.dtype != torch.float32 \
            else contextlib.nullcontext()
        with autocast:
            return self.wrapped(src.to(self.dist.device), tgt.to(self.dist.device))

    def backward(self, loss):
        self.scaler.scale(loss / self.accumulation_steps).backward()

    def step(self) -> StepResult:
        self.scaler.unscale_(self.optimizer)
        limit = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
        skipped = not math.isfinite(norm)  # the unscaled gradients: also how GradScaler finds an overflow
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips by itself on overflow and lowers the scale
            self.scaler.update()
        elif not skipped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(norm, skipped, scale_overflow=skipped and self.scaler.is_enabled())

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def consolidated_state_dict(self, dtype):
        return cast_state(self.model.state_dict(), dtype) if self.dist.is_main else None

    def save(self, directory):
        if self.dist.is_main:  # DDP keeps every rank's weights and optimizer state identical
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()},
                       directory / "engine.pt")

    def load(self, directory):
        from tencentpretrain.training.checkpointing import read_state_file

        path = directory / "engine.pt"
        if not path.is_file():
            raise CheckpointError(f"{path} missing: was the state saved by another engine (with --deepspeed)?")
        state = read_state_file(path, self.dist.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
