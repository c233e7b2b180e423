"""Convert a Hugging Face BERT directory (BertForPreTraining or BertForMaskedLM) to TencentPretrain."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import load_hf_bert
from tencentpretrain.convert.cli import to_tencentpretrain


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_bert, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
