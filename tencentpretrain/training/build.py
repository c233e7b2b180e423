"""``setup()`` (options, distributed init, seed) and ``build()`` (data, model, engine, resume) of a training run."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tencentpretrain.checkpoint import CheckpointError, check_state_dict, load_state_dict
from tencentpretrain.cli import InputError, naming
from tencentpretrain.config import ModelConfig
from tencentpretrain.data import BinaryDataset, DataLoader
from tencentpretrain.model import build_model
from tencentpretrain.tokenizers.sentencepiece import SentencePieceTokenizer, file_fingerprint
from tencentpretrain.training import checkpointing
from tencentpretrain.training.deepspeed_engine import init_partitioned, load_partitioned
from tencentpretrain.training.engine import DTYPES, DistInfo, Engine, PlainEngine
from tencentpretrain.training.flops import measure_matmul_peak, model_flops_per_token
from tencentpretrain.training.logging import TrainLogger
from tencentpretrain.training.optim import build_adamw, build_scheduler, param_groups, warmup_steps_of
from tencentpretrain.training.options import TrainOptions, parse_options
from tencentpretrain.vocab import check_vocab, vocab_rows


class SetupError(InputError):
    """Data, tokenizer, config and checkpoint that do not belong together; the message names what differs."""


@dataclass
class Run:
    """Everything ``train()`` needs; ``start_step`` and ``skipped_steps`` come from the resumed state."""

    opts: TrainOptions
    dist: DistInfo
    config: ModelConfig
    engine: Engine
    loader: DataLoader
    dev_dataset: BinaryDataset | None
    logger: TrainLogger
    flops_per_token: float
    peak_flops: float
    start_step: int = 0
    skipped_steps: int = 0  # all skipped steps, fp16 loss-scale overflows included
    overflow_steps: int = 0  # of which fp16 loss-scale overflows


def note(message: str) -> None:
    """A message for the user, printed once (by rank 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[pretrain] {message}", file=sys.stderr, flush=True)


@dataclass
class MemoryTrace:
    """Per-stage memory of this process (Linux), printed by every rank when ``TP_MEMORY_TRACE=1``.

    ``mark(stage)`` prints the peak resident set since the previous mark (``VmHWM``, which it then resets by
    writing 5 to ``/proc/self/clear_refs``) and the resident set now, split into anonymous memory (tensors, heap)
    and file pages (mapped libraries, a memory-mapped checkpoint: page cache, shared and reclaimable).
    """

    rank: int = 0
    enabled: bool = field(default_factory=lambda: os.environ.get("TP_MEMORY_TRACE", "") not in ("", "0"))

    def mark(self, stage: str) -> None:
        if not self.enabled:
            return
        try:
            status = open("/proc/self/status", encoding="ascii").read()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
        except OSError:
            return
        mib = {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) // 1024
               for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
        print(f"[pretrain] rank {self.rank} memory after {stage}: peak {mib['VmHWM']} MiB, resident {mib['VmRSS']} "
              f"MiB (anon {mib['RssAnon']}, file {mib['RssFile']})", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) alike on every rank."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(argv: list[str] | None = None) -> tuple[TrainOptions, DistInfo]:
    """Parse the command line, join the process group (torchrun / deepspeed launchers), seed."""
    opts = parse_options(argv)
    info = init_distributed(opts)
    seed_everything(opts.seed)
    return opts, info


def init_distributed(opts: TrainOptions) -> DistInfo:
    """Join the process group the launcher describes (env RANK/WORLD_SIZE/LOCAL_RANK); none for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", opts.local_rank or 0))
    cuda = torch.cuda.is_available()
    device = torch.device(opts.device) if opts.device else torch.device(f"cuda:{local}" if cuda else "cpu")
    if device.type == "cuda" and device.index is None:  # --device cuda: this rank's own GPU
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = opts.backend or ("nccl" if device.type == "cuda" else "gloo")
    if opts.deepspeed:
        import deepspeed

        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        deepspeed.init_distributed(dist_backend=backend)
    elif world > 1:
        dist.init_process_group(backend)
    if opts.world_size and opts.world_size != world:
        note(f"--world_size {opts.world_size} ignored: the launcher started {world} process(es)")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokenizer_of(opts: TrainOptions, dataset: BinaryDataset) -> tuple[int, str]:
    """The tokenizer's size and its name for messages: --spm_model_path's, else the one the dataset records."""
    if opts.spm_model_path:
        return SentencePieceTokenizer(opts.spm_model_path).vocab_size, opts.spm_model_path
    return int(dataset.meta["vocab_size"]), f"(the one recorded in dataset {opts.dataset_path})"


def check_dataset(dataset: BinaryDataset, opts: TrainOptions, config: ModelConfig,
                  tokenizer: tuple[int, str]) -> None:
    """Refuse a dataset made with another tokenizer, vocabulary, processor or a too long sequence length."""
    meta, where = dataset.meta, f"dataset {opts.dataset_path}"
    size, name = tokenizer
    if int(meta["vocab_size"]) != size:
        raise SetupError(f"{where} was made with a tokenizer of {meta['vocab_size']} pieces, tokenizer {name} has "
                         f"{size}")
    if opts.spm_model_path:
        mine = file_fingerprint(opts.spm_model_path)
        if meta.get("tokenizer_fingerprint") != mine:
            raise SetupError(f"{where} was tokenized with another tokenizer: its fingerprint is "
                             f"{meta.get('tokenizer_fingerprint')}, {opts.spm_model_path} has {mine}")
    processor, source = expected_processor(opts, config)
    if processor and meta.get("data_processor") != processor:
        raise SetupError(f"{where} was made by data processor {meta.get('data_processor')!r}, {source} says "
                         f"{processor!r}")
    if opts.seq_length is not None and opts.seq_length > dataset.seq_length:
        raise SetupError(f"--seq_length {opts.seq_length} > seq_length {dataset.seq_length} of {where}: samples can "
                         "be truncated, not lengthened")
    if seq_length_of(opts, dataset) > config.max_seq_length:
        raise SetupError(f"{where} has seq_length {seq_length_of(opts, dataset)} > max_seq_length "
                         f"{config.max_seq_length} of {opts.config_path} (truncate with --seq_length)")


def expected_processor(opts: TrainOptions, config: ModelConfig) -> tuple[str | None, str]:
    """The data processor the dataset must come from, and who says so: ``--data_processor``, else the config's
    ``data_processor`` (TencentPretrain's rule: a flag on the command line wins over the config file's key)."""
    if opts.data_processor:
        return opts.data_processor, "--data_processor"
    return config.data_processor, f"the \"data_processor\" of {opts.config_path} (override with --data_processor)"


def seq_length_of(opts: TrainOptions, dataset: BinaryDataset) -> int:
    """Input positions per sample: ``--seq_length`` (samples are truncated to it), else the dataset's."""
    return opts.seq_length or dataset.seq_length


def vocab_size_of(opts: TrainOptions, config: ModelConfig, dataset: BinaryDataset,
                  tokenizer: tuple[int, str]) -> int:
    """The model's vocabulary: the config's ``vocab_size``, else the tokenizer's (``tokenizer_of``). Tokenizer,
    dataset and config must agree (``vocab.check_vocab``)."""
    check_vocab(*tokenizer, {}, opts.config_path, config)
    check_dataset(dataset, opts, config, tokenizer)
    return config.vocab_size if config.vocab_size is not None else tokenizer[0]


def build_model_state(opts: TrainOptions, config: ModelConfig, vocab_size: int, context, info: DistInfo,
                      trace: MemoryTrace | None = None, tokenizer: tuple[int, str] | None = None):
    """The model, partitioned under ``context`` (ZeRO-3) or whole, filled from ``--pretrained_model_path`` or
    initialised N(0, 0.02); then activation checkpointing, LoRA and freezing as asked.

    Only rank 0 opens the pretrained checkpoint (memory-mapped); the other ranks receive their slices (ZeRO-3) or
    rank 0's weights when the engine is built (DDP, DeepSpeed's broadcast).
    """
    trace = trace or MemoryTrace(info.rank, enabled=False)
    pretrained = bool(opts.pretrained_model_path) and not resuming(opts)
    state = pretrained_state(opts, config, vocab_size, info, tokenizer) if pretrained else None  # None on ranks > 0
    with heap_policy(opts):
        with context:
            model = build_model(config, vocab_size)
        trace.mark("building the model")
        (load_partitioned(model, state, info) if pretrained else init_partitioned(model))
        del state
    trace.mark("loading the weights" if pretrained else "initialising")
    model.encoder.checkpoint_activations = opts.activation_checkpointing
    if opts.use_lora:
        from tencentpretrain.training.lora import apply_lora

        with context:
            apply_lora(model, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.lora_target_modules,
                       opts.lora_train_modules)
    elif opts.freeze_patterns:
        from tencentpretrain.training.lora import freeze_parameters

        note(f"froze {len(freeze_parameters(model, opts.freeze_patterns))} parameter tensors")
    return model


def pretrained_state(opts: TrainOptions, config: ModelConfig, vocab_size: int, info: DistInfo,
                     tokenizer: tuple[int, str] | None = None):
    """Rank 0 memory-maps ``--pretrained_model_path`` and checks it against the config and ``tokenizer`` (size,
    name); other ranks get None.

    Raises:
        CheckpointError: on every rank (rank 0's message) when the checkpoint does not fit.
    """
    state, error = None, None
    if info.is_main:
        try:
            with naming("--pretrained_model_path", opts.pretrained_model_path):
                state = load_state_dict(opts.pretrained_model_path)  # memory-mapped: pages are read when copied
                if tokenizer is not None:  # (size, name) from tokenizer_of
                    check_vocab(*tokenizer, vocab_rows(state), opts.pretrained_model_path, config)
                with torch.device("meta"):
                    check_state_dict(build_model(config, vocab_size), state, source=opts.pretrained_model_path)
        except CheckpointError as err:
            error = str(err)
    if info.world_size > 1 and dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise CheckpointError(error)
    return state


def heap_policy(opts: TrainOptions):
    """``steady_heap`` (see deepspeed_engine.py) around a ZeRO-3 build and load; nothing otherwise."""
    if not (opts.deepspeed and opts.enable_zero3):
        return contextlib.nullcontext()
    from tencentpretrain.training.deepspeed_engine import steady_heap

    return steady_heap()


def resuming(opts: TrainOptions) -> bool:
    return opts.resume or opts.resume_from_checkpoint is not None


def build_engine(opts: TrainOptions, model: torch.nn.Module, ds_config: dict | None, info: DistInfo) -> Engine:
    """DeepSpeed's engine with ``--deepspeed``, else the plain (one process or DDP) engine."""
    groups = param_groups(model, opts.weight_decay)
    warmup = warmup_steps_of(opts.warmup, opts.total_steps)

    def scheduler_fn(optimizer):
        return build_scheduler(optimizer, opts.scheduler, warmup, opts.total_steps)

    betas = (opts.adam_beta1, opts.adam_beta2)
    if ds_config is None:
        model.to(info.device)
        optimizer = build_adamw(groups, opts.learning_rate, betas, opts.adam_eps, info.device)
        return PlainEngine(model, optimizer, scheduler_fn(optimizer), info, opts.precision, opts.accumulation_steps,
                           opts.max_grad_norm)
    from tencentpretrain.training.deepspeed_engine import DeepSpeedEngine

    optimizer = None if "optimizer" in ds_config else build_adamw(groups, opts.learning_rate, betas, opts.adam_eps,
                                                                   info.device)
    return DeepSpeedEngine(model, optimizer, scheduler_fn, ds_config, groups, info)


def build(opts: TrainOptions, info: DistInfo, trace: MemoryTrace | None = None) -> Run:
    """Check data against config and tokenizer, build model and engine, resume when asked.

    ``trace`` (default: one enabled by ``TP_MEMORY_TRACE=1``) marks the memory after each stage.
    """
    trace = trace or MemoryTrace(info.rank)
    overrides = {"dropout": opts.dropout} if opts.dropout is not None else {}
    with naming("--config_path", opts.config_path):
        config = ModelConfig.from_json(opts.config_path, **overrides)
    with naming("--dataset_path", opts.dataset_path):
        dataset = BinaryDataset(opts.dataset_path)
    with naming("--spm_model_path", opts.spm_model_path):
        tokenizer = tokenizer_of(opts, dataset)
        vocab_size = vocab_size_of(opts, config, dataset, tokenizer)
    with naming("--dev_dataset_path", opts.dev_dataset_path):
        dev = BinaryDataset(opts.dev_dataset_path) if opts.dev_dataset_path else None
    if dev is not None and dev.meta["vocab_size"] != dataset.meta["vocab_size"]:
        raise SetupError(f"dev dataset {opts.dev_dataset_path} was made with a tokenizer of {dev.meta['vocab_size']} "
                         f"pieces, dataset {opts.dataset_path} with {dataset.meta['vocab_size']}")
    ds_config, context = None, contextlib.nullcontext()
    if opts.deepspeed:
        from tencentpretrain.training.deepspeed_engine import deepspeed_config, partitioned_build

        ds_config = deepspeed_config(opts, info.device.type == "cuda", note)
        context = partitioned_build(ds_config, opts.enable_zero3)
    trace.mark("reading the data and config")
    model = build_model_state(opts, config, vocab_size, context, info, trace, tokenizer)
    engine = build_engine(opts, model, ds_config, info)
    trace.mark("building the engine (optimizer)")
    loader = DataLoader(dataset, opts.batch_size, info.rank, info.world_size, seed=opts.seed, shuffle=True,
                        seq_length=opts.seq_length)
    start_step, skipped, overflows = resume(opts, engine, loader, info) if resuming(opts) else (0, 0, 0)
    logger = TrainLogger(opts.log_file, opts.tensorboard_dir, info.is_main, start_step)
    fpt = model_flops_per_token(config, seq_length_of(opts, dataset), vocab_size)
    peak_dtype = DTYPES[opts.precision] if info.device.type == "cuda" else torch.float32
    peak = opts.peak_flops or measure_matmul_peak(info.device, peak_dtype)
    return Run(opts, info, config, engine, loader, dev, logger, fpt, peak, start_step, skipped, overflows)


def resume(opts: TrainOptions, engine: Engine, loader: DataLoader, info: DistInfo) -> tuple[int, int, int]:
    """Load the latest (or the given) training state; returns (step, skipped steps, overflowed steps so far)."""
    flag = "--resume_from_checkpoint" if opts.resume_from_checkpoint else "--resume"
    where = opts.resume_from_checkpoint or checkpointing.state_root(opts.output_model_path)
    with naming(flag, where):
        directory = checkpointing.latest_state(where)
        engine.load(Path(directory))
        state = checkpointing.load_rank_state(Path(directory), info.rank)
    loader.load_state_dict(state["loader"])
    note(f"resumed from {directory} at step {state['step']}")
    return int(state["step"]), int(state.get("skipped_steps", 0)), int(state.get("overflow_steps", 0))

