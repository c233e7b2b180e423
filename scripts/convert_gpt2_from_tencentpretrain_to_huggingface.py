"""Convert a TencentPretrain GPT-2 checkpoint to a Hugging Face directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.convert import save_hf_gpt2  # noqa: E402
from tencentpretrain.convert.cli import from_tencentpretrain  # noqa: E402


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_gpt2, __doc__, "gpt2", argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
