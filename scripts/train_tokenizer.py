"""Train a LLaMA-style SentencePiece tokenizer on a corpus (one document per line)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tencentpretrain.tokenizers.train import train_sentencepiece  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus_path", required=True, help="training text, one document per line")
    parser.add_argument("--model_prefix", required=True, help="writes <prefix>.model and <prefix>.vocab")
    parser.add_argument("--vocab_size", type=int, default=32000, help="number of pieces")
    parser.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece algorithm")
    parser.add_argument("--character_coverage", type=float, default=1.0,
                        help="characters covered by pieces (0.9995 suits Chinese)")
    args = parser.parse_args(argv)
    if not Path(args.corpus_path).is_file():
        print(f"error: corpus not found: {args.corpus_path}", file=sys.stderr)
        return 1
    path = train_sentencepiece(args.corpus_path, args.model_prefix, args.vocab_size, args.model_type,
                               args.character_coverage)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
