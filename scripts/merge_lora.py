"""Merge a LoRA adapter into its base checkpoint, giving a plain TencentPretrain checkpoint.

    python scripts/merge_lora.py --base_model_path models/llama-7b.bin \
        --lora_model_path models/llama_zh_lora.bin --output_model_path models/llama_zh_7b.bin

Rank and alpha are read from the settings file saved beside the adapter (``llama_zh_lora.lora.json``); pass
``--lora_alpha`` (the rank is taken from the adapter's tensors) when that file is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from tencentpretrain.checkpoint import CheckpointError, load_state_dict, save_state_dict  # noqa: E402
from tencentpretrain.training.lora import LoraError, merge_lora_state, read_adapter_config  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model_path", required=True, help="Base checkpoint (.bin or .safetensors).")
    parser.add_argument("--lora_model_path", required=True, help="Adapter written by training with --use_lora.")
    parser.add_argument("--output_model_path", required=True, help="Merged checkpoint (.bin or .safetensors).")
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="LoRA alpha; overrides the adapter's settings file (needed when it is missing).")
    return parser.parse_args(argv)


def adapter_rank(adapter: dict) -> int:
    """The rank of an adapter's factors (rows of any ``lora_A``)."""
    ranks = {tensor.shape[0] for name, tensor in adapter.items() if name.endswith(".lora_A")}
    if len(ranks) != 1:
        raise LoraError(f"adapter has {'no LoRA factors' if not ranks else f'mixed ranks {sorted(ranks)}'}")
    return ranks.pop()


def main(argv: list[str] | None = None) -> int:
    """Run the merge; returns the exit status (errors are printed to stderr)."""
    args = parse_args(argv)
    try:
        adapter = load_state_dict(args.lora_model_path)
        rank = adapter_rank(adapter)
        if args.lora_alpha is not None:
            alpha = args.lora_alpha
        else:
            config = read_adapter_config(args.lora_model_path)
            if config.rank != rank:
                raise LoraError(f"{args.lora_model_path}: settings say rank {config.rank}, tensors have {rank}")
            alpha = config.alpha
        merged = merge_lora_state(load_state_dict(args.base_model_path), adapter, rank, alpha)
        save_state_dict(merged, args.output_model_path)
    except (LoraError, CheckpointError) as err:
        print(f"merge_lora: error: {err}", file=sys.stderr)
        return 1
    print(f"merged {sum(k.endswith('.lora_A') for k in adapter)} adapted layers (rank {rank}, alpha {alpha}) "
          f"into {args.output_model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
