"""Convert a Hugging Face GPT-2 directory to TencentPretrain."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_hf_gpt2
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_gpt2, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
