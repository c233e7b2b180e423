"""The training loop: lr -> forward -> backward -> step at the accumulation boundary -> log / eval / save.

``main(argv)`` is what ``pretrain.py`` runs: ``setup()`` and ``build()`` (see build.py), then ``train()``.
The loop talks to one engine interface, so it reads the same for one CPU process, DDP and DeepSpeed ZeRO-3.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from tencentpretrain.data import DataLoader
from tencentpretrain.errors import InputError
from tencentpretrain.training import checkpointing
from tencentpretrain.training.build import Run, build, compute_dtype, setup
from tencentpretrain.training.distributed import leave_distributed
from tencentpretrain.training.engine import StepResult
from tencentpretrain.training.flops import measure_matmul_peak
from tencentpretrain.training.logging import format_eta, note


class TrainingStopped(InputError):
    """Training gave up: too many steps with a non-finite loss or gradient (the settings or data need a change;
    reported like bad input, with the flag to adjust)."""


@dataclass
class Window:
    """Sums over the steps since the last report (this rank's; reduced over ranks when reported)."""

    loss_sum: float = 0.0  # sum over counted targets of their loss
    targets: float = 0.0  # counted targets
    tokens: float = 0.0  # real (non-pad) input tokens
    grad_norm_sum: float = 0.0  # over the steps taken (a skipped step's norm is not finite)
    norm_steps: int = 0  # steps taken
    start: float = 0.0
    parts: dict[str, list[float]] = field(default_factory=dict)  # with several targets: name -> [loss_sum, n, correct]

    def add(self, metrics: dict) -> None:
        """Count one micro-batch's metrics (``Model.loss``'s)."""
        targets = float(metrics["tokens"])
        self.loss_sum += float(metrics["loss"]) * targets
        self.targets += targets
        for key in metrics:
            if key.endswith(".loss"):
                name = key[:-len(".loss")]
                count = float(metrics[f"{name}.tokens"])
                sums = self.parts.setdefault(name, [0.0, 0.0, 0.0])
                sums[0] += float(metrics[key]) * count
                sums[1] += count
                sums[2] += float(metrics.get(f"{name}.correct", 0.0))

    def reset(self) -> None:
        self.__init__(start=time.perf_counter())


def train(run: Run) -> int:
    """Train from ``run.start_step`` to ``--total_steps``; returns the last step reached."""
    opts, engine = run.opts, run.engine
    batches = iter(run.loader)
    window, step, began = Window(start=time.perf_counter()), run.start_step, time.perf_counter()
    engine.train()
    while step < opts.total_steps:
        for micro in range(opts.accumulation_steps):
            batch = next(batches)
            loss, metrics = engine.forward(batch.inputs(), boundary=micro == opts.accumulation_steps - 1)
            engine.backward(loss)
            window.add(metrics)
            window.tokens += batch.tokens
        lr = engine.lr  # the rate this step is taken with
        result = engine.step()
        step += 1
        if result.skipped:
            count_skipped(run, step, result)
        else:
            window.grad_norm_sum += result.grad_norm
            window.norm_steps += 1
        if step % opts.report_steps == 0 or step == opts.total_steps:
            report(run, window, step, lr, began)
            window.reset()
        if run.dev_dataset is not None and (step % opts.dev_every == 0 or step == opts.total_steps):
            evaluate(run, step)
        if step % opts.save_checkpoint_steps == 0 or step == opts.total_steps:
            save(run, step, final=step == opts.total_steps)
    return step


def count_skipped(run: Run, step: int, result: StepResult) -> None:
    """The watchdog: count a skipped step; stop once more than ``--max_skipped_steps`` were skipped for a
    non-finite loss or gradient (fp16 loss-scale overflows are counted, and logged, but never stop a run)."""
    run.skipped_steps += 1
    if result.scale_overflow:
        run.overflow_steps += 1
        note(f"step {step}: fp16 gradients overflowed, step skipped and the loss scale lowered")
        return
    faulty, most = run.skipped_steps - run.overflow_steps, run.opts.max_skipped_steps
    note(f"step {step}: non-finite loss or gradient norm, step skipped ({faulty}/{most})")
    if faulty > most:
        raise TrainingStopped(f"stopped at step {step}: {faulty} steps skipped for non-finite loss or gradients "
                              f"(--max_skipped_steps {most})")


def report(run: Run, window: Window, step: int, lr: float, began: float) -> None:
    """Reduce the window over ranks and log one record (rank 0 prints it). With several targets the loss is their
    sum, weighted by the first target's count, and each target's mean loss and accuracy are logged too."""
    names = sorted(window.parts)
    sums = run.dist.all_reduce_sum([window.loss_sum, window.targets, window.tokens]
                                   + [value for name in names for value in window.parts[name]])
    loss_sum, targets, tokens = sums[:3]
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    loss = loss_sum / max(targets, 1.0)
    tokens_per_s = tokens / elapsed
    done = step - run.start_step
    eta = (time.perf_counter() - began) / done * (run.opts.total_steps - step)
    world = run.dist.world_size
    if run.opts.peak_flops is None and run.flops_per_token * tokens_per_s > run.peak_flops * world:
        # The start-up measurement ran while the machine was busy: measure the peak again rather than show MFU > 1.
        peak = measure_matmul_peak(run.dist.device, compute_dtype(run.opts, run.dist))
        run.peak_flops = max(run.peak_flops, peak)
    norm = window.grad_norm_sum / window.norm_steps if window.norm_steps else None  # None: every step skipped
    record = {"split": "train", "step": step, "total_steps": run.opts.total_steps, "loss": loss,
              "ppl": math.exp(min(loss, 50.0)), "lr": lr, "grad_norm": norm,
              "tokens_per_s": tokens_per_s,
              "mfu": run.flops_per_token * tokens_per_s / (run.peak_flops * world),
              "eta": format_eta(eta), "skipped_steps": run.skipped_steps, "time": time.time()}
    for i, name in enumerate(names):
        part_loss, count, correct = sums[3 + 3 * i:6 + 3 * i]
        record[f"{name}_loss"] = part_loss / max(count, 1.0)
        record[f"{name}_acc"] = correct / max(count, 1.0)
    run.logger.log(record)


def evaluate(run: Run, step: int) -> float:
    """Mean loss over ``--dev_batches`` batches of the dev set (the same batches every time)."""
    seq_length = min(run.opts.seq_length or run.dev_dataset.seq_length, run.dev_dataset.seq_length)
    loader = DataLoader(run.dev_dataset, run.opts.batch_size, run.dist.rank, run.dist.world_size, shuffle=False,
                        seq_length=seq_length)
    loss_sum = targets = 0.0
    run.engine.train(False)
    with torch.no_grad():
        for _, batch in zip(range(run.opts.dev_batches), loader):
            _, metrics = run.engine.forward(batch.inputs(), boundary=True)
            loss_sum += float(metrics["loss"]) * float(metrics["tokens"])
            targets += float(metrics["tokens"])
    run.engine.train(True)
    loss_sum, targets = run.dist.all_reduce_sum([loss_sum, targets])
    loss = loss_sum / max(targets, 1.0)
    run.logger.log({"split": "dev", "step": step, "loss": loss, "ppl": math.exp(min(loss, 50.0)),
                    "time": time.time()})
    return loss


def save(run: Run, step: int, final: bool) -> None:
    """Consolidated model (and adapter), then the full training state (``Checkpointer.save``)."""
    run.checkpointer.save(run.engine, step, final, run.loop_state(step))


def main(argv: list[str] | None = None) -> int:
    """Run ``pretrain.py``; returns 0.

    Bad input raises an :class:`~tencentpretrain.cli.InputError` (``run_cli`` prints it and exits 1). Under
    torchrun/DeepSpeed every rank reaches the same error: all ranks read the same config, dataset and tokenizer,
    and only rank 0 reads ``--pretrained_model_path`` but broadcasts its verdict (``weights.pretrained_state``).
    """
    opts, info = setup(argv)
    run = build(opts, info)
    try:
        train(run)
    finally:
        run.logger.close()
    leave_distributed()
    note(f"done: {checkpointing.final_model_path(opts.output_model_path)}")
    return 0
