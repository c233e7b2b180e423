"""Convert a Hugging Face BART directory (BartForConditionalGeneration) to
TencentPretrain (the positions without their two offset rows, final_logits_bias as the head's bias)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.convert import load_hf_bart  # noqa: E402
from tencentpretrain.convert.cli import to_tencentpretrain  # noqa: E402


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_bart, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
