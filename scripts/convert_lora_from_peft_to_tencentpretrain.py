"""Convert a PEFT LoRA adapter directory (of a Hugging Face LLaMA) to a TencentPretrain adapter file.

    python scripts/convert_lora_from_peft_to_tencentpretrain.py --input_model_path PEFT_DIR \
        --config_path models/llama/7b_config.json --output_model_path models/llama_zh_lora.bin

Writes the adapter (``.bin`` or ``.safetensors``) and its settings beside it (``llama_zh_lora.lora.json``), as
``pretrain.py --use_lora`` does; ``merge_lora.py`` and ``run_llama.py --lora_path`` read it.
"""

from __future__ import annotations

import argparse
import sys

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.peft import is_peft_dir, read_peft_adapter
from tencentpretrain.errors import InputError
from tencentpretrain.training.lora import write_adapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_model_path", required=True, help="PEFT adapter directory (adapter_config.json).")
    parser.add_argument("--config_path", required=True, help="The base model's TencentPretrain JSON config.")
    parser.add_argument("--output_model_path", required=True, help="Our adapter file (.bin or .safetensors).")
    args = parser.parse_args(argv)
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    with naming("--input_model_path", args.input_model_path):
        if not is_peft_dir(args.input_model_path):
            raise InputError(f"{args.input_model_path}: not a PEFT adapter directory (no adapter_config.json)")
        adapter, lora = read_peft_adapter(args.input_model_path, config)
    write_adapter(adapter, lora, args.output_model_path)
    print(f"wrote {len(lora.target_modules)} adapted layers (rank {lora.rank}, alpha {lora.alpha}) and "
          f"{len(lora.train_modules)} full tensors to {args.output_model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
