"""Convert a Hugging Face BART directory (BartForConditionalGeneration) to
TencentPretrain (the positions without their two offset rows, final_logits_bias as the head's bias)."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_hf_bart
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_bart, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
