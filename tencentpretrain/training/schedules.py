"""Learning-rate schedules with warmup, registered in ``SCHEDULERS`` (``--scheduler`` offers ``SCHEDULERS.names()``).

A schedule is a function ``(step, warmup_steps, total_steps) -> factor``; the learning rate at optimizer step
``step`` (0-based) is ``learning_rate * factor``. The package's ``__init__`` imports this module, so the names are
registered whichever training module is imported first; ``optim.build_scheduler`` turns one into a torch scheduler.
"""

from __future__ import annotations

import math

from tencentpretrain.errors import InputError
from tencentpretrain.registry import SCHEDULERS


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
