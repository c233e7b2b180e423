"""Merge a LoRA adapter into its base checkpoint, giving a plain TencentPretrain checkpoint.

    python scripts/merge_lora.py --base_model_path models/llama-7b.bin \
        --lora_model_path models/llama_zh_lora.bin --output_model_path models/llama_zh_7b.bin

Rank and alpha are read from the settings file saved beside the adapter (``llama_zh_lora.lora.json``); pass
``--lora_alpha`` (the rank is taken from the adapter's tensors) when that file is missing. ``--lora_model_path`` may
also be a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``); it then needs the
model's ``--config_path``.
"""

from __future__ import annotations

import argparse
import sys

from tencentpretrain.checkpoint import load_state_dict, save_state_dict
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.peft import is_peft_dir, read_peft_adapter
from tencentpretrain.training.lora import LoraError, merge_lora_state, read_adapter_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model_path", required=True, help="Base checkpoint (.bin or .safetensors).")
    parser.add_argument("--lora_model_path", required=True,
                        help="Adapter written by training with --use_lora, or a PEFT adapter directory.")
    parser.add_argument("--config_path", help="The model's JSON config (needed for a PEFT adapter).")
    parser.add_argument("--output_model_path", required=True, help="Merged checkpoint (.bin or .safetensors).")
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="LoRA alpha; overrides the adapter's settings file (needed when it is missing).")
    return parser.parse_args(argv)


def adapter_rank(adapter: dict, source: str = "adapter") -> int:
    """The rank of an adapter's factors (rows of any ``lora_A``)."""
    ranks = {tensor.shape[0] for name, tensor in adapter.items() if name.endswith(".lora_A")}
    if len(ranks) != 1:
        raise LoraError(f"{source}: adapter has {'no LoRA factors' if not ranks else f'mixed ranks {sorted(ranks)}'}")
    return ranks.pop()


def main(argv: list[str] | None = None) -> int:
    """Run the merge; returns 0. Bad input raises an InputError (run_cli prints it, exit status 1)."""
    args = parse_args(argv)
    with naming("--lora_model_path", args.lora_model_path):
        adapter, rank, alpha = read_peft(args) if is_peft_dir(args.lora_model_path) else read_ours(args)
    with naming("--base_model_path", args.base_model_path):
        base = load_state_dict(args.base_model_path)
    merged = merge_lora_state(base, adapter, rank, alpha)
    save_state_dict(merged, args.output_model_path)
    print(f"merged {sum(k.endswith('.lora_A') for k in adapter)} adapted layers (rank {rank}, alpha {alpha}) "
          f"into {args.output_model_path}")
    return 0


def read_peft(args: argparse.Namespace) -> tuple[dict, int, float]:
    """A PEFT adapter directory as our adapter state, its rank and alpha (``--lora_alpha`` overrides)."""
    if args.config_path is None:
        raise LoraError(f"{args.lora_model_path} is a PEFT adapter: pass the model's --config_path")
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    adapter, settings = read_peft_adapter(args.lora_model_path, config)
    return adapter, settings.rank, settings.alpha if args.lora_alpha is None else args.lora_alpha


def read_ours(args: argparse.Namespace) -> tuple[dict, int, float]:
    """Our adapter file, its rank (from the tensors) and alpha (``--lora_alpha``, else its settings file)."""
    adapter = load_state_dict(args.lora_model_path)
    rank = adapter_rank(adapter, args.lora_model_path)
    if args.lora_alpha is not None:
        return adapter, rank, args.lora_alpha
    config = read_adapter_config(args.lora_model_path)
    if config.rank != rank:
        raise LoraError(f"{args.lora_model_path}: settings say rank {config.rank}, tensors have {rank}")
    return adapter, rank, config.alpha


if __name__ == "__main__":
    sys.exit(run_cli(main))
