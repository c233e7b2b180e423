"""Train a LLaMA-style SentencePiece tokenizer on a corpus (one document per line), or with --model_type wordpiece a
BERT WordPiece vocabulary (<prefix>-vocab.txt, for --vocab_path)."""

import argparse
import sys
from pathlib import Path

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.data.corpus import first_invalid_utf8_line
from tencentpretrain.errors import InputError
from tencentpretrain.tokenizers.train import train_sentencepiece, train_wordpiece


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus_path", required=True, help="training text, one document per line")
    parser.add_argument("--model_prefix", required=True, help="writes <prefix>.model and <prefix>.vocab "
                                                              "(wordpiece: <prefix>-vocab.txt)")
    parser.add_argument("--vocab_size", type=int, default=32000, help="number of pieces")
    parser.add_argument("--model_type", choices=("bpe", "unigram", "wordpiece"), default="bpe",
                        help="SentencePiece algorithm, or wordpiece for a BERT vocab.txt")
    parser.add_argument("--cased", action="store_true", help="wordpiece: keep the case (default: uncased)")
    parser.add_argument("--character_coverage", type=float, default=1.0,
                        help="characters covered by pieces (0.9995 suits Chinese)")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus_path)
    if not corpus.is_file():
        raise InputError(f"--corpus_path {corpus}: " + ("is a directory, expected a text file" if corpus.is_dir()
                                                         else "corpus not found"))
    bad_line = first_invalid_utf8_line(corpus)
    if bad_line:
        raise InputError(f"--corpus_path {corpus}: not UTF-8 at line {bad_line}")
    with naming("--corpus_path", args.corpus_path):
        if args.model_type == "wordpiece":
            path = train_wordpiece(corpus, f"{args.model_prefix}-vocab.txt", args.vocab_size,
                                   lowercase=not args.cased)
        else:
            path = train_sentencepiece(args.corpus_path, args.model_prefix, args.vocab_size, args.model_type,
                                       args.character_coverage)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
