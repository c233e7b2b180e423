"""Convert a TencentPretrain BERT checkpoint to a Hugging Face directory (BertForPreTraining with the mlm and sp
targets, BertForMaskedLM with mlm alone); with --vocab_path
its tokenizer too, so that AutoTokenizer and the fill-mask pipeline load the directory as it is."""

import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.convert import save_hf_bert
from tencentpretrain.convert.cli import from_tencentpretrain


def main(argv=None) -> int:
    return from_tencentpretrain(save_hf_bert, __doc__, "bert", argv, vocab_path=None)


if __name__ == "__main__":
    sys.exit(run_cli(main))
