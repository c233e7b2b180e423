"""Convert a TencentPretrain BART checkpoint to a Hugging Face directory that BartForConditionalGeneration loads."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_bart
from tencentpretrain.convert.cli import from_tencentpretrain


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_bart, __doc__, "bart", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
