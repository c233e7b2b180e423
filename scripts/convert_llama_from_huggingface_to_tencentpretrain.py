"""Convert a Hugging Face LLaMA directory (config.json + safetensors or bin, single or sharded) to TencentPretrain."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_hf_llama
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_llama, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
