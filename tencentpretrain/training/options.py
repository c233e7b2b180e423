"""Run settings of ``pretrain.py``: a frozen dataclass whose fields are the command-line flags.

Defaults and help texts live on the dataclass; ``build_parser()`` derives the argparse parser from it, so the
two cannot drift apart. Flag names are TencentPretrain's (``--total_steps``, ``--save_checkpoint_steps``,
``--batch_size``, ``--deepspeed_config``, ...). The model's architecture is not here: it is ``ModelConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field

import tencentpretrain.data  # noqa: F401  (registers the data processors)
from tencentpretrain.dtypes import DTYPES
from tencentpretrain.errors import InputError
from tencentpretrain.registry import DATA_PROCESSORS, SCHEDULERS

SAVE_DTYPES = tuple(DTYPES)


def _opt(default, help: str, choices=None, **extra):
    """A dataclass field carrying its command-line help (and optional choices, a list or a callable)."""
    return field(default=default, metadata={"help": help, "choices": choices, **extra})


class OptionsError(InputError):
    """Run settings that contradict each other; the message names the flags."""


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``pretrain.py`` is told on its command line."""

    # paths
    dataset_path: str = _opt("dataset", "Preprocessed dataset (written by preprocess.py).")
    pretrained_model_path: str | None = _opt(None, "TencentPretrain checkpoint to start from (.bin/.safetensors).")
    output_model_path: str = _opt(None, "Output prefix: writes <prefix>.bin, <prefix>-<step> and <prefix>/ "
                                        "(training state); see docs/training.md.", required=True)
    config_path: str = _opt(None, "Model config JSON (e.g. models/llama/7b_config.json).", required=True)
    spm_model_path: str | None = _opt(None, "SentencePiece model; its fingerprint must match the dataset's.")
    tokenizer_path: str | None = _opt(None, "Hugging Face tokenizer.json or directory, or a BERT vocab.txt (instead "
                                            "of --spm_model_path); "
                                            "its fingerprint must match the dataset's.")
    vocab_path: str | None = _opt(None, "BERT WordPiece vocab.txt (TencentPretrain's flag, instead of "
                                        "--tokenizer_path); its fingerprint must match the dataset's.")
    tokenizer: str = _opt("sentencepiece", "Accepted for TencentPretrain compatibility.")
    dev_dataset_path: str | None = _opt(None, "Preprocessed dev dataset: dev loss/perplexity every --dev_steps.")
    data_processor: str | None = _opt(None, "Expected data processor of the dataset (checked against it).",
                                      choices=DATA_PROCESSORS.names)
    # schedule of the run
    total_steps: int = _opt(100000, "Optimizer steps to train for.")
    save_checkpoint_steps: int = _opt(10000, "Save a checkpoint and the training state every this many steps.")
    report_steps: int = _opt(100, "Print a progress line every this many steps.")
    dev_steps: int | None = _opt(None, "Evaluate on --dev_dataset_path every this many steps "
                                       "(default: --save_checkpoint_steps).")
    dev_batches: int = _opt(20, "Batches per dev evaluation.")
    accumulation_steps: int = _opt(1, "Micro-batches per optimizer step.")
    batch_size: int = _opt(32, "Micro-batch size per process. Global batch = batch_size * world * accumulation.")
    seq_length: int | None = _opt(None, "Truncate samples to this length (default: the dataset's).")
    seed: int = _opt(7, "Random seed (single-process CPU runs are bitwise reproducible).")
    dropout: float | None = _opt(None, "Override the config's dropout.")
    resume: bool = _opt(False, "Continue from the latest training state under <output_model_path>/.")
    resume_from_checkpoint: str | None = _opt(None, "Continue from this training-state directory instead.")
    # optimization
    learning_rate: float = _opt(2e-5, "Peak learning rate.")
    warmup: float = _opt(0.1, "Warmup: a fraction of --total_steps when < 1, else a number of steps.")
    scheduler: str = _opt("linear", "Learning-rate schedule after warmup.", choices=SCHEDULERS.names)
    optimizer: str = _opt("adamw", "Optimizer.", choices=("adamw",))
    weight_decay: float = _opt(0.01, "Weight decay of matrices (norm weights and biases never decay).")
    adam_beta1: float = _opt(0.9, "AdamW beta1.")
    adam_beta2: float = _opt(0.999, "AdamW beta2.")
    adam_eps: float = _opt(1e-6, "AdamW epsilon.")
    max_grad_norm: float = _opt(1.0, "Clip the gradient norm to this (0 disables clipping).")
    max_skipped_steps: int = _opt(10, "Stop after this many steps skipped for a non-finite loss or gradient.")
    # precision and memory
    fp16: bool = _opt(False, "Mixed precision fp16 with loss scaling (GPUs).")
    bf16: bool = _opt(False, "Mixed precision bf16 (autocast): GPUs with bf16, and CPUs, where it is faster than fp32 "
                                 "only with AMX (docs/machines.md).")
    save_dtype: str = _opt("fp32", "Dtype of the consolidated checkpoints.", choices=SAVE_DTYPES)
    checkpoint_activations: bool = _opt(False, "Recompute each layer's activations in the backward pass.")
    deepspeed_checkpoint_activations: bool = _opt(False, "Same as --checkpoint_activations (TencentPretrain name).")
    deepspeed_checkpoint_layers_num: int = _opt(1, "Accepted for TencentPretrain compatibility (layers are "
                                                   "checkpointed one by one).")
    # distributed
    deepspeed: bool = _opt(False, "Train with DeepSpeed (start with the deepspeed launcher).")
    deepspeed_config: str = _opt("models/deepspeed_config.json", "DeepSpeed config; batch, accumulation and lr "
                                                                 "entries are generated from our flags.")
    enable_zero3: bool = _opt(False, "Build the model partitioned (ZeRO-3, deepspeed.zero.Init).")
    world_size: int | None = _opt(None, "Informational under launchers (their environment decides).")
    local_rank: int | None = _opt(None, "Set by the deepspeed launcher.")
    backend: str | None = _opt(None, "Process-group backend (default: nccl with CUDA, else gloo).",
                               choices=("nccl", "gloo"))
    gpu_ranks: tuple[int, ...] = _opt((), "Accepted for TencentPretrain compatibility; use torchrun.", nargs="*")
    master_ip: str | None = _opt(None, "Accepted for TencentPretrain compatibility; use torchrun instead.")
    device: str | None = _opt(None, "Device (default: cuda:<local rank> when available, else cpu).")
    # logging
    log_path: str | None = _opt(None, "Training log, .jsonl or .csv (default: <output_model_path>-log.jsonl).")
    tensorboard_dir: str | None = _opt(None, "Write TensorBoard event files here.")
    peak_flops: float | None = _opt(None, "Peak FLOP/s per process for MFU (default: measured with a matmul).")
    # LoRA and freezing
    use_lora: bool = _opt(False, "Train LoRA adapters only (plus --lora_train_modules).")
    lora_r: int = _opt(8, "LoRA rank.")
    lora_alpha: float = _opt(16.0, "LoRA alpha (update scaled by alpha / r).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA input.")
    lora_target_modules: tuple[str, ...] = _opt(("linear_layers.*",), "Linear layers that get adapters.", nargs="+")
    lora_train_modules: tuple[str, ...] = _opt((), "Parameters trained in full with LoRA (e.g. embedding.* "
                                             "target.lm.output_layer).", nargs="*")
    lora_format: str = _opt("tencentpretrain", "Adapter files: tencentpretrain (<output>-lora.bin and its .lora.json), "
                            "peft (<output>-lora/, what peft.PeftModel.from_pretrained loads on the Hugging Face "
                            "export) or both.", choices=("tencentpretrain", "peft", "both"))
    freeze_patterns: tuple[str, ...] = _opt((), "Freeze parameters whose names match these patterns.", nargs="*")

    def __post_init__(self) -> None:
        for key in ("total_steps", "save_checkpoint_steps", "report_steps", "accumulation_steps", "batch_size",
                    "dev_batches", "deepspeed_checkpoint_layers_num", "lora_r"):
            if getattr(self, key) < 1:
                raise OptionsError(f"--{key} must be a positive integer, got {getattr(self, key)}")
        if self.fp16 and self.bf16:
            raise OptionsError("--fp16 and --bf16 exclude each other")
        if self.enable_zero3 and not self.deepspeed:
            raise OptionsError("--enable_zero3 needs --deepspeed (and the deepspeed launcher)")
        if self.use_lora and self.freeze_patterns:
            raise OptionsError("--use_lora freezes everything but the adapters; drop --freeze_patterns")
        if self.learning_rate < 0 or self.max_grad_norm < 0:
            raise OptionsError("--learning_rate and --max_grad_norm must be >= 0")

    @property
    def precision(self) -> str:
        """"fp16", "bf16" or "fp32"."""
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def activation_checkpointing(self) -> bool:
        return self.checkpoint_activations or self.deepspeed_checkpoint_activations

    @property
    def log_file(self) -> str:
        return self.log_path or f"{self.output_model_path}-log.jsonl"

    @property
    def dev_every(self) -> int:
        return self.dev_steps or self.save_checkpoint_steps


def _arg_type(hint) -> tuple[type, bool]:
    """(element type, is a list) of a field's annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``pretrain.py``, derived from ``TrainOptions``."""
    parser = argparse.ArgumentParser(description="Pretrain or fine-tune a TencentPretrain-style model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(TrainOptions)
    for f in dataclasses.fields(TrainOptions):
        meta = dict(f.metadata)
        kind, is_list = _arg_type(hints[f.name])
        kwargs = {"help": meta.pop("help"), "default": f.default}
        choices = meta.pop("choices")
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", **kwargs)
            continue
        if choices is not None:
            kwargs["choices"] = (choices() if callable(choices) else list(choices)) or None
        if is_list:
            kwargs["default"] = list(f.default)
        parser.add_argument(f"--{f.name}", type=kind, **kwargs, **meta)
    return parser


def parse_options(argv: list[str] | None = None) -> TrainOptions:
    """Parse a command line into ``TrainOptions``; bad combinations exit with a message naming the flags."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(namespace).items()}
    try:
        return TrainOptions(**values)
    except OptionsError as err:
        parser.error(str(err))
