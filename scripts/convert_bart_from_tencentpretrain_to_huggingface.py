"""Convert a TencentPretrain BART checkpoint to a Hugging Face directory that BartForConditionalGeneration loads."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.convert import save_hf_bart  # noqa: E402
from tencentpretrain.convert.cli import from_tencentpretrain  # noqa: E402


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_bart, __doc__, "bart", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
