"""The DeepSpeed config of a run: the user's file, with the entries our flags also set generated from the flags.

The file keeps what only DeepSpeed knows (ZeRO stage, offload, loss scaling); the entries that our flags also set
are generated from the flags, so there is one source of truth: micro-batch size, accumulation, learning rate,
gradient clipping, and the schedule (ours, from SCHEDULERS). Without CUDA the config is adapted to the CPU (no
fp16/bf16, no pinned memory, no offload, torch AdamW instead of DeepSpeed's fused/CPU Adam), with a logged note for
each change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.model_zoo import zoo_path
from tencentpretrain.training.options import OptionsError, TrainOptions


def deepspeed_config(opts: TrainOptions, on_cuda: bool, note: Callable[[str], None]) -> dict:
    """The DeepSpeed config dict for this run: the file's content with our flags' entries written over it."""
    path = config_file(opts.deepspeed_config)
    config = read_json_object(path, OptionsError, missing=f"--deepspeed_config {path} does not exist",
                              what="a DeepSpeed config")
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two below and the world size
    config["train_micro_batch_size_per_gpu"] = opts.batch_size
    config["gradient_accumulation_steps"] = opts.accumulation_steps
    config["gradient_clipping"] = opts.max_grad_norm
    if "scheduler" in config:
        note(f"{path}: ignoring its \"scheduler\"; the schedule is --scheduler {opts.scheduler} with --warmup")
        del config["scheduler"]
    if "optimizer" in config:
        config["optimizer"].setdefault("params", {})["lr"] = opts.learning_rate
    _set_precision(config, opts, on_cuda, note)
    if not on_cuda:
        _adapt_to_cpu(config, path, note)
    if not opts.enable_zero3 and config.get("zero_optimization", {}).get("stage") == 3:
        note(f"{path}: ZeRO stage 3 without --enable_zero3: the model is built whole, then partitioned")
    return config


def config_file(name: str) -> Path:
    """``--deepspeed_config`` as given; a ``models/...`` path that is not there (a run outside the checkout, such as
    the default ``models/deepspeed_config.json``) is the zoo's file of that name when it has one."""
    path = Path(name)
    if not path.exists() and path.parts[:1] == ("models",):
        shipped = zoo_path(*path.parts[1:])
        if shipped.is_file():
            return shipped
    return path


def _set_precision(config: dict, opts: TrainOptions, on_cuda: bool, note: Callable[[str], None]) -> None:
    if opts.precision != "fp32":  # our flag wins over the file
        config.setdefault("fp16", {})["enabled"] = opts.precision == "fp16"
        config.setdefault("bf16", {})["enabled"] = opts.precision == "bf16"
    if not on_cuda:
        for key in ("fp16", "bf16"):
            if config.get(key, {}).get("enabled"):
                note(f"{key} disabled: no CUDA device, training in fp32")
                config[key]["enabled"] = False


def _adapt_to_cpu(config: dict, path: Path, note: Callable[[str], None]) -> None:
    zero = config.get("zero_optimization", {})
    for key in ("offload_param", "offload_optimizer"):
        if key in zero:
            note(f"{path}: dropping zero_optimization.{key}: the parameters already live in CPU memory")
            del zero[key]
    if "optimizer" in config:
        note(f"{path}: its \"{config['optimizer'].get('type')}\" optimizer needs a compiled op; "
             "using torch.optim.AdamW on the CPU")
        del config["optimizer"]
    config["zero_allow_untested_optimizer"] = True
    config["zero_force_ds_cpu_optimizer"] = False
    if config.get("flops_profiler", {}).get("enabled"):
        note(f"{path}: flops_profiler disabled on the CPU")
        config["flops_profiler"]["enabled"] = False
