"""Convert a TencentPretrain LLaMA checkpoint to a Hugging Face directory (sharded safetensors, config, tokenizer)."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_llama
from tencentpretrain.convert.cli import from_tencentpretrain


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_llama, __doc__, "llama", argv, spm_model_path=None)


if __name__ == "__main__":
    sys.exit(run_cli(main))
