"""Convert a TencentPretrain LoRA adapter file to a PEFT adapter directory for the Hugging Face export.

    python scripts/convert_lora_from_tencentpretrain_to_peft.py --input_model_path models/llama_zh_lora.bin \
        --config_path models/llama/7b_config.json --output_model_path PEFT_DIR

The directory (``adapter_config.json`` + ``adapter_model.safetensors``) loads with
``peft.PeftModel.from_pretrained(model, PEFT_DIR)`` on the model that
``convert_llama_from_tencentpretrain_to_huggingface.py`` wrote; tensors trained in full (``--lora_train_modules``)
become ``modules_to_save``.
"""

from __future__ import annotations

import argparse
import sys

from tencentpretrain.checkpoint import load_state_dict
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.peft import write_peft_adapter
from tencentpretrain.training.lora import read_adapter_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_model_path", required=True, help="Our adapter file, its .lora.json beside it.")
    parser.add_argument("--config_path", required=True, help="The base model's TencentPretrain JSON config.")
    parser.add_argument("--output_model_path", required=True, help="PEFT adapter directory to write.")
    args = parser.parse_args(argv)
    with naming("--config_path", args.config_path):
        config = ModelConfig.from_json(args.config_path)
    with naming("--input_model_path", args.input_model_path):
        adapter, lora = load_state_dict(args.input_model_path), read_adapter_config(args.input_model_path)
    write_peft_adapter(adapter, lora, config, args.output_model_path)
    print(f"wrote a PEFT adapter (rank {lora.rank}, alpha {lora.alpha}) to {args.output_model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
