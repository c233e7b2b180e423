"""The plain PyTorch backend: one process, or DDP over several (torchrun); AdamW, autocast and GradScaler."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.dtypes import DTYPES
from tencentpretrain.training.checkpointing import read_state_file
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.engine import BuildPlan, Engine, LossModule, StepResult, cast_state
from tencentpretrain.training.optim import adamw_of, param_groups, scheduler_of
from tencentpretrain.training.options import TrainOptions


class PlainEngine(Engine):
    """PyTorch AdamW on one process, or DDP over several; autocast for fp16/bf16 (GPUs and CPUs), GradScaler for fp16.

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

    @classmethod
    def build(cls, opts: TrainOptions, model: nn.Module, info: DistInfo, plan: BuildPlan) -> PlainEngine:
        """``model`` moved to this rank's device, AdamW and the schedule, as the run's options say."""
        model.to(info.device)
        optimizer = adamw_of(opts, param_groups(model, opts.weight_decay), info.device)
        return cls(model, optimizer, scheduler_of(opts)(optimizer), info, opts.precision, opts.accumulation_steps,
                   opts.max_grad_norm)

    def forward(self, inputs, boundary):
        if isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            self.wrapped.require_backward_grad_sync = boundary  # what no_sync() does, without a context
        autocast = torch.autocast(self.dist.device.type, dtype=self.dtype) if self.dtype != torch.float32 \
            else contextlib.nullcontext()
        with autocast:
            return self.wrapped(**{name: tensor.to(self.dist.device) for name, tensor in inputs.items()})

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

    def export(self, dtype):
        return cast_state(self.model.state_dict(), dtype) if self.dist.is_main else None

    def save(self, directory):
        if self.dist.is_main:  # DDP keeps every rank's weights and optimizer state identical
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()},
                       directory / "engine.pt")

    def load(self, directory):
        path = directory / "engine.pt"
        if not path.is_file():
            raise CheckpointError(f"{path} missing: was the state saved by another engine (with --deepspeed)?")
        state = read_state_file(path, self.dist.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
