"""Convert a Hugging Face BERT directory (BertForPreTraining or BertForMaskedLM) to TencentPretrain."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.cli import run_cli  # noqa: E402
from tencentpretrain.convert import load_hf_bert  # noqa: E402
from tencentpretrain.convert.cli import to_tencentpretrain  # noqa: E402


def main(argv=None) -> int:
    return to_tencentpretrain(load_hf_bert, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
