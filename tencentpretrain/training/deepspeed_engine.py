"""The DeepSpeed backend: its config (``deepspeed_config.py``), the plan to build the model partitioned (ZeRO-3,
``--enable_zero3``) under the glibc heap policy or whole, ``deepspeed.initialize`` with our optimizer and schedule,
the NaN/inf watchdog, and the consolidated state gathered one parameter at a time.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.training.deepspeed_config import deepspeed_config
from tencentpretrain.training.distributed import DistInfo
from tencentpretrain.training.engine import BuildPlan, Engine, LossModule, StepResult
from tencentpretrain.training.logging import note
from tencentpretrain.training.memory import steady_heap
from tencentpretrain.training.optim import adamw_of, param_groups, scheduler_of
from tencentpretrain.training.options import TrainOptions
from tencentpretrain.training.weights import gathered


def partitioned_build(config: dict, enabled: bool) -> contextlib.AbstractContextManager:
    """The context to build the model in: ``deepspeed.zero.Init`` (partitioned as built) when ``enabled``."""
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=config, enabled=enabled)


@dataclass(frozen=True)
class DeepSpeedPlan(BuildPlan):
    """``BuildPlan`` with the run's DeepSpeed config (``deepspeed_config``), which ``deepspeed.initialize`` gets
    too."""

    config: dict = field(default_factory=dict)


class DeepSpeedEngine(Engine):
    """``deepspeed.initialize`` around the model, with our optimizer (or the config's) and our schedule.

    Args:
        model: built under ``partitioned_build`` (ZeRO-3) or whole.
        optimizer: a torch optimizer, or None to let DeepSpeed build the config's ``optimizer``.
        scheduler_fn: builds the LR scheduler from the optimizer DeepSpeed ends up with.
        config: the dict from ``deepspeed_config``.
        groups: parameter groups (weight decay by rule).
        dist_info: rank, world size and device.
    """

    def __init__(self, model: nn.Module, optimizer, scheduler_fn, config: dict, groups: list[dict],
                 dist_info: DistInfo):
        import deepspeed

        self.model, self.dist = model, dist_info
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=LossModule(model), optimizer=optimizer, model_parameters=groups, config=config,
            lr_scheduler=scheduler_fn)  # DeepSpeed steps the schedule after each optimizer step
        self._boundary, self._poisoned, self._poisoned_window = True, False, False
        for param in model.parameters():
            if param.requires_grad:
                param.register_hook(self._scrub)

    @classmethod
    def plan(cls, opts: TrainOptions, info: DistInfo) -> DeepSpeedPlan:
        """The run's DeepSpeed config; with ``--enable_zero3`` the model is built partitioned (``zero.Init``) under
        the steady heap policy, else whole."""
        config = deepspeed_config(opts, info.device.type == "cuda", note)
        zero3 = opts.enable_zero3
        return DeepSpeedPlan(partitioned_build(config, zero3), steady_heap() if zero3 else contextlib.nullcontext(),
                             config)

    @classmethod
    def build(cls, opts: TrainOptions, model: nn.Module, info: DistInfo, plan: DeepSpeedPlan) -> DeepSpeedEngine:
        """The engine over ``plan``'s config, with our AdamW (unless the config brings its own optimizer) and
        schedule."""
        groups = param_groups(model, opts.weight_decay)
        optimizer = None if "optimizer" in plan.config else adamw_of(opts, groups, info.device)
        return cls(model, optimizer, scheduler_of(opts), plan.config, groups, info)

    def _scrub(self, grad: torch.Tensor) -> torch.Tensor:
        """Zero the gradients of a micro-batch whose loss was not finite on some rank."""
        return torch.zeros_like(grad) if self._poisoned else grad

    def forward(self, inputs, boundary):
        self._boundary = boundary
        return self.ds(**{name: tensor.to(self.ds.device) for name, tensor in inputs.items()})

    def backward(self, loss):
        self._poisoned = bool(self.dist.all_reduce_sum([0.0 if math.isfinite(loss.item()) else 1.0])[0])
        self._poisoned_window |= self._poisoned
        self.ds.backward(loss)
        self._poisoned = False
        if not self._boundary:
            self.ds.step()  # DeepSpeed counts micro-steps in step(); it only updates at the boundary

    def step(self) -> StepResult:
        """Step, or skip: a non-finite loss on some rank (its gradients were zeroed: step with lr 0), or a
        non-finite gradient norm (DeepSpeed's ZeRO and fp16/bf16 optimizers then discard the step themselves)."""
        poisoned, self._poisoned_window = self._poisoned_window, False
        if poisoned:  # the gradients are zeros; with lr 0 AdamW leaves the weights as they are
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0
        discarded = self.ds.skipped_steps
        self.ds.step()  # then the schedule sets the next step's lr
        discarded = self.ds.skipped_steps > discarded
        if discarded:  # DeepSpeed does not advance the schedule on a step it discards; the plain engine does
            self.scheduler.step()
        norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        skipped = poisoned or discarded or not math.isfinite(norm)
        return StepResult(math.nan if poisoned else norm, skipped,
                          scale_overflow=discarded and not poisoned and self.ds.fp16_enabled())

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def export(self, dtype):
        """Gather one parameter at a time; only rank 0 keeps a CPU copy (at ``dtype``)."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        state, cache = {}, {}
        for name, tensor in self.model.state_dict().items():
            param = params.get(name)
            if param is None:  # a persistent buffer: never partitioned
                state[name] = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype)
                continue
            if id(param) not in cache:
                with gathered([param], modifier_rank=None):
                    cache[id(param)] = param.detach().to("cpu", dtype).clone() if self.dist.is_main else None
            state[name] = cache[id(param)]
        return state if self.dist.is_main else None

    def save(self, directory):
        self.ds.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)

    def load(self, directory):
        path, _ = self.ds.load_checkpoint(str(directory.parent), tag=directory.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint in {directory} (was it saved without --deepspeed?)")


