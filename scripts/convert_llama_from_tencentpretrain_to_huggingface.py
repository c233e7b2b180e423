"""Convert a TencentPretrain LLaMA checkpoint to a Hugging Face directory (sharded safetensors, config, tokenizer)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.convert import save_hf_llama  # noqa: E402
from tencentpretrain.convert.cli import from_tencentpretrain  # noqa: E402


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_llama, __doc__, "llama", argv, spm_model_path=None)


if __name__ == "__main__":
    sys.exit(run_cli(main))
