"""Convert a Hugging Face T5 directory (T5ForConditionalGeneration: v1.0 with its tied head, v1.1 with its own) to
TencentPretrain; the encoder's relative bias table is written under both of its names."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_hf_t5
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_t5, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
