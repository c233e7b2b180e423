"""Convert a TencentPretrain T5 checkpoint to a Hugging Face directory that T5ForConditionalGeneration loads."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_t5
from tencentpretrain.convert.cli import from_tencentpretrain


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_t5, __doc__, "t5", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
