"""``setup()`` (options, distributed init, seed) and ``build()`` (inputs, engine, data, resume) of a training run.

``build`` only assembles: the inputs are read and checked in ``inputs.py``, the model is built as the engine's
backend (``plain_engine.py`` or ``deepspeed_engine.py``) plans it (``model_setup.py``) and handed to the engine,
which adds its optimizer, and the ``Checkpointer`` (``checkpointing.py``) resumes. Where each decision lives:
docs/architecture.md, "Training".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tencentpretrain.data import BinaryDataset, DataLoader
from tencentpretrain.dtypes import DTYPES, bf16_is_faster
from tencentpretrain.hardware import cpu
from tencentpretrain.training.checkpointing import Checkpointer
from tencentpretrain.training.distributed import DistInfo, init_distributed, seed_everything
from tencentpretrain.training.engine import Engine
from tencentpretrain.training.flops import measure_matmul_peak, model_flops_per_token
from tencentpretrain.training.inputs import read_inputs
from tencentpretrain.training.logging import TrainLogger, note
from tencentpretrain.training.memory import MemoryTrace
from tencentpretrain.training.model_setup import ModelSetup, build_training_model
from tencentpretrain.training.options import TrainOptions, parse_options


@dataclass
class Run:
    """Everything ``train()`` needs; ``start_step`` and the skipped-step counters come from the resumed state."""

    opts: TrainOptions
    dist: DistInfo
    engine: Engine
    loader: DataLoader
    dev_dataset: BinaryDataset | None
    checkpointer: Checkpointer
    logger: TrainLogger
    flops_per_token: float
    peak_flops: float
    start_step: int = 0
    skipped_steps: int = 0  # all skipped steps, fp16 loss-scale overflows included
    overflow_steps: int = 0  # of which fp16 loss-scale overflows

    def loop_state(self, step: int) -> dict:
        """What a training state keeps of the loop (per rank): step, data position and skipped-step counts."""
        return {"step": step, "loader": self.loader.state_dict(), "skipped_steps": self.skipped_steps,
                "overflow_steps": self.overflow_steps}


def setup(argv: list[str] | None = None) -> tuple[TrainOptions, DistInfo]:
    """Parse the command line, join the process group (torchrun / deepspeed launchers), seed."""
    opts = parse_options(argv)
    info = init_distributed(opts)
    seed_everything(opts.seed)
    return opts, info


def build(opts: TrainOptions, info: DistInfo, trace: MemoryTrace | None = None) -> Run:
    """Check data against config and tokenizer, build model and engine, resume when asked.

    ``trace`` (default: one enabled by ``TP_MEMORY_TRACE=1``) marks the memory after each stage.
    """
    trace = trace or MemoryTrace(info.rank)
    note_slow_precision(opts, info)
    inputs = read_inputs(opts)
    trace.mark("reading the data and config")
    setup = ModelSetup.of(opts, inputs)
    checkpointer = Checkpointer.of(opts, info, setup)
    engine = build_engine(opts, setup, info, trace)
    trace.mark("building the engine (optimizer)")
    loader = DataLoader(inputs.dataset, opts.batch_size, info.rank, info.world_size, seed=opts.seed, shuffle=True,
                        seq_length=opts.seq_length)
    resumed = {}
    if opts.resume or opts.resume_from_checkpoint is not None:
        resumed = checkpointer.resume(engine, opts.resume_from_checkpoint)
        loader.load_state_dict(resumed["loader"])
    start = int(resumed.get("step", 0))
    logger = TrainLogger(opts.log_file, opts.tensorboard_dir, info.is_main, start)
    flops = model_flops_per_token(inputs.config, inputs.seq_length, inputs.vocab_size)
    peak = opts.peak_flops or measure_matmul_peak(info.device, compute_dtype(opts, info))
    return Run(opts, info, engine, loader, inputs.dev_dataset, checkpointer, logger, flops, peak, start,
               int(resumed.get("skipped_steps", 0)), int(resumed.get("overflow_steps", 0)))


def build_engine(opts: TrainOptions, setup: ModelSetup, info: DistInfo, trace: MemoryTrace) -> Engine:
    """The model ``setup`` describes, built as the run's backend plans it, and the engine around it."""
    backend = engine_class(opts)
    plan = backend.plan(opts, info)
    model = build_training_model(setup, info, plan, trace)
    return backend.build(opts, model, info, plan)


def engine_class(opts: TrainOptions) -> type[Engine]:
    """The backend: DeepSpeed's engine with ``--deepspeed``, else the plain (one process or DDP) one."""
    if opts.deepspeed:
        from tencentpretrain.training.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine
    from tencentpretrain.training.plain_engine import PlainEngine

    return PlainEngine


def compute_dtype(opts: TrainOptions, info: DistInfo) -> torch.dtype:
    """The dtype the matrix products run in under autocast (for the MFU's peak): ``--fp16``/``--bf16``, else
    float32, on GPUs and CPUs alike."""
    return DTYPES[opts.precision]


def note_slow_precision(opts: TrainOptions, info: DistInfo) -> None:
    """Say once (rank 0) when ``--bf16`` was asked for on a CPU where bf16 runs slower than fp32."""
    if opts.precision == "bf16" and info.device.type == "cpu" and info.is_main and not bf16_is_faster("cpu"):
        note(f"--bf16 on {cpu().kind()}: bf16 matrix products run slower than fp32 without AMX "
             "(docs/machines.md); training goes on in bf16 autocast as asked")
