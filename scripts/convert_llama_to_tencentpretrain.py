"""Convert Meta's original LLaMA checkpoint (params.json + consolidated.*.pth, one or several files)
to TencentPretrain."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_meta_llama
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_meta_llama, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
