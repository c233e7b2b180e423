"""Compare SentencePiece tokenizers on a corpus: characters, bytes, tokens, tokens per character and the share of
byte-fallback tokens, side by side.

    python scripts/tokenizer_stats.py --corpus_path zh.txt --spm_model_path llama.model merged/tokenizer.model
    python scripts/tokenizer_stats.py --corpus_path zh.txt --spm_model_path a.model b.model --json
    python scripts/tokenizer_stats.py --corpus_path zh.txt --tokenizer_path Llama-3.1-8B merged/tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import sys

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.errors import InputError
from tencentpretrain.tokenizers.stats import corpus_lines, format_table, tokenizer_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_path", required=True, help="text, one document a line (each encoded whole)")
    parser.add_argument("--spm_model_path", nargs="+", default=[], help="one or more SentencePiece models")
    parser.add_argument("--tokenizer_path", nargs="+", default=[], help="one or more Hugging Face tokenizer.json "
                        "files or directories (byte-level BPE: Llama-3, Qwen), or BERT vocab.txt files")
    parser.add_argument("--vocab_path", nargs="+", default=[], help="one or more BERT WordPiece vocab.txt files")
    parser.add_argument("--max_lines", type=int, help="only the first N non-empty lines")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per tokenizer) instead")
    args = parser.parse_args(argv)
    if not args.spm_model_path and not args.tokenizer_path and not args.vocab_path:
        parser.error("give --spm_model_path, --tokenizer_path or --vocab_path (or several, to compare)")
    with naming("--corpus_path", args.corpus_path):
        lines = corpus_lines(args.corpus_path, args.max_lines)
    if not lines:
        raise InputError(f"--corpus_path {args.corpus_path}: no non-empty line")
    rows = []
    for path in args.spm_model_path:
        with naming("--spm_model_path", path):
            rows.append(tokenizer_stats(lines, path))
    for path in args.tokenizer_path:
        with naming("--tokenizer_path", path):
            rows.append(tokenizer_stats(lines, tokenizer_path=path))
    for path in args.vocab_path:
        with naming("--vocab_path", path):
            rows.append(tokenizer_stats(lines, vocab_path=path))
    print(json.dumps([r.to_dict() for r in rows], indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
