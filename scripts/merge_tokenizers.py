"""Merge a tokenizer into a base one, as the Chinese LLaMA work did: SentencePiece (LLaMA-1/2) or byte-level BPE
(Llama-3, Qwen: a tokenizer.json).

    python scripts/merge_tokenizers.py --base_spm_model_path llama.model --extra_spm_model_path chinese.model \\
        --output_dir merged_tokenizer
    python scripts/merge_tokenizers.py --base_spm_model_path llama.model --corpus_path zh.txt \\
        --extra_vocab_size 20000 --output_dir merged_tokenizer
    python scripts/merge_tokenizers.py --base_tokenizer_path Llama-3.1-8B --corpus_path zh.txt \\
        --extra_vocab_size 20000 --output_dir merged_tokenizer

The base's pieces keep their ids; the extra model's pieces the base lacks are appended in the extra model's order
(for BPE with the merges that form them, after the base's). Writes DIR/tokenizer.model and the Hugging Face
tokenizer files (tokenizer_config.json, special_tokens_map.json), or for BPE DIR/tokenizer.json with the base's
tokenizer_config.json, and prints the sizes. See docs/vocabulary.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.convert.llama import write_hf_tokenizer
from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_text
from tencentpretrain.tokenizers import SentencePieceTokenizer
from tencentpretrain.tokenizers.merge import SCORE_POLICIES, merge_models
from tencentpretrain.tokenizers.train import train_sentencepiece


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_spm_model_path", help="the base SentencePiece model (LLaMA's)")
    parser.add_argument("--extra_spm_model_path", help="the model whose new pieces are appended")
    parser.add_argument("--base_tokenizer_path", help="the base byte-level BPE: a tokenizer.json or a Hugging Face "
                        "directory (Llama-3's, Qwen's)")
    parser.add_argument("--extra_tokenizer_path", help="the byte-level BPE whose new tokens are appended (it must "
                        "split text as the base does)")
    parser.add_argument("--corpus_path", help="train the extra model on this corpus first (one document a line)")
    parser.add_argument("--extra_vocab_size", type=int, default=20000, help="pieces of the extra model trained "
                        "with --corpus_path")
    parser.add_argument("--character_coverage", type=float, default=0.9995, help="with --corpus_path: characters "
                        "covered by the extra model's pieces (0.9995 suits Chinese, 1.0 small alphabets)")
    parser.add_argument("--scores", choices=SCORE_POLICIES, default="ranked", help="scores of the appended "
                        "pieces: ranked (below every base piece: a text never gets more tokens, and Hugging Face's "
                        "tokenizer encodes exactly as SentencePiece) or zero (the published Chinese LLaMA files)")
    parser.add_argument("--output_dir", required=True, help="writes tokenizer.model and the Hugging Face files here")
    return parser


def extra_model(args: argparse.Namespace, out_dir: Path) -> Path:
    """The extra model: given, or trained on --corpus_path into DIR/extra_spm.model."""
    if (args.extra_spm_model_path is None) == (args.corpus_path is None):
        raise InputError("give exactly one of --extra_spm_model_path and --corpus_path")
    if args.extra_spm_model_path is not None:
        return Path(args.extra_spm_model_path)
    if not Path(args.corpus_path).is_file():
        raise InputError(f"--corpus_path {args.corpus_path}: no such file")
    if args.extra_vocab_size < 260:
        raise InputError(f"--extra_vocab_size must be at least 260, got {args.extra_vocab_size}")
    print(f"training a {args.extra_vocab_size}-piece model on {args.corpus_path}", flush=True)
    try:
        return train_sentencepiece(args.corpus_path, out_dir / "extra_spm", args.extra_vocab_size,
                                   character_coverage=args.character_coverage)
    except RuntimeError as err:  # SentencePiece's trainer: e.g. more characters than --extra_vocab_size
        raise InputError(f"--corpus_path {args.corpus_path}: training a {args.extra_vocab_size}-piece model "
                         f"failed: {str(err).splitlines()[-1]}") from None


def merge_bpe_tokenizers(args: argparse.Namespace, out_dir: Path) -> None:
    """The byte-level BPE merge: --base_tokenizer_path with --extra_tokenizer_path, or one trained on
    --corpus_path with the base's pre-tokenizer."""
    from tencentpretrain.tokenizers import tokenizer_files
    from tencentpretrain.tokenizers.bpe_merge import merge_bpe
    from tencentpretrain.tokenizers.train import train_byte_level_bpe

    if (args.extra_tokenizer_path is None) == (args.corpus_path is None):
        raise InputError("give exactly one of --extra_tokenizer_path and --corpus_path")
    with naming("--base_tokenizer_path", args.base_tokenizer_path):
        base_file, _ = tokenizer_files(args.base_tokenizer_path)
    if args.extra_tokenizer_path is not None:
        with naming("--base_tokenizer_path", args.base_tokenizer_path), \
                naming("--extra_tokenizer_path", args.extra_tokenizer_path):
            report = merge_bpe(base_file, args.extra_tokenizer_path, out_dir)
    else:
        with naming("--corpus_path", args.corpus_path):
            lines = [line for line in read_text(args.corpus_path, InputError, "a text corpus").splitlines() if line]
        if not lines:
            raise InputError(f"--corpus_path {args.corpus_path}: no non-empty line")
        print(f"training a {args.extra_vocab_size}-token byte-level BPE on {args.corpus_path}", flush=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.extra.") as staging:
            extra = train_byte_level_bpe(lines, Path(staging) / "extra", args.extra_vocab_size, special_tokens=(),
                                         like=base_file)
            with naming("--base_tokenizer_path", args.base_tokenizer_path):
                report = merge_bpe(base_file, extra, out_dir)
            shutil.copyfile(extra / "tokenizer.json", out_dir / "extra_tokenizer.json")  # kept for reference
    print(f"base {report.base} tokens, extra {report.extra}, added {report.added}, merged {report.merged}")
    print(f"wrote {out_dir / 'tokenizer.json'} and the base's tokenizer_config.json in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.output_dir)
    if (args.base_spm_model_path is None) == (args.base_tokenizer_path is None):
        raise InputError("give one of --base_spm_model_path (SentencePiece) and --base_tokenizer_path (byte-level "
                         "BPE tokenizer.json)")
    if args.base_tokenizer_path is not None:
        if args.extra_spm_model_path is not None:
            raise InputError("--extra_spm_model_path merges into --base_spm_model_path; a byte-level BPE base takes "
                             "--extra_tokenizer_path or --corpus_path")
        merge_bpe_tokenizers(args, out_dir)
        return 0
    if args.extra_tokenizer_path is not None:
        raise InputError("--extra_tokenizer_path merges into --base_tokenizer_path")
    extra = extra_model(args, out_dir)
    with naming("--base_spm_model_path", args.base_spm_model_path), naming("--extra_spm_model_path", extra):
        report = merge_models(args.base_spm_model_path, extra, out_dir / "tokenizer.model", args.scores)
    write_hf_tokenizer(out_dir, SentencePieceTokenizer(out_dir / "tokenizer.model"))
    print(f"base {report.base} pieces, extra {report.extra}, added {report.added}, merged {report.merged}")
    print(f"wrote {out_dir / 'tokenizer.model'} and the Hugging Face tokenizer files in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
