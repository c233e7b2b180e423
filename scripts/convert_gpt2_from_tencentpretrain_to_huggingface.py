"""Convert a TencentPretrain GPT-2 checkpoint to a Hugging Face directory."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_gpt2
from tencentpretrain.convert.cli import from_tencentpretrain


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_gpt2, __doc__, "gpt2", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
