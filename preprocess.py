"""Preprocess a corpus into a binary dataset directory (docs/dataset_format.md).

    python preprocess.py --corpus_path corpus.txt --spm_model_path tokenizer.model --dataset_path dataset \
        --data_processor lm --seq_length 512 --processes_num 8
    python preprocess.py --corpus_path alpaca.json --spm_model_path tokenizer.model --dataset_path sft \
        --data_processor alpaca --seq_length 512 --processes_num 8
    python preprocess.py --corpus_path corpus.txt --tokenizer_path Qwen3-0.6B --dataset_path dataset \
        --data_processor lm --seq_length 2048
    python preprocess.py --corpus_path corpus.txt --vocab_path bert-base-uncased/vocab.txt --dataset_path dataset \
        --data_processor lm --seq_length 512
    python preprocess.py --corpus_path corpus.txt --spm_model_path t5-small/spiece.model --dataset_path t5 \
        --data_processor t5 --seq_length 512
    python preprocess.py --corpus_path documents.txt --tokenizer_path bart-base --dataset_path bart \
        --data_processor bart --seq_length 512
    python preprocess.py --corpus_path conversations.json --spm_model_path tokenizer.model --dataset_path chat \
        --data_processor chat --template alpaca --seq_length 2048
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ModelConfig
from tencentpretrain.data import ProcessorSpec, build_dataset
from tencentpretrain.data.bart import MASK_RATIO, POISSON_LAMBDA
from tencentpretrain.data.chat import LOSS_ON
from tencentpretrain.data.chat_template import load_template
from tencentpretrain.data.corpus import resolve_format
from tencentpretrain.data.processors import TAILS
from tencentpretrain.data.t5 import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY
from tencentpretrain.errors import InputError
from tencentpretrain.registry import DATA_PROCESSORS, TEMPLATES, TOKENIZERS
from tencentpretrain.tokenizers import SPECIAL_TOKENS, open_tokenizer, read_special_tokens, tokenizer_source
from tencentpretrain.vocab import check_vocab, checkpoint_vocab_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_path", required=True, help="The corpus: text (one document a line), JSONL or JSON.")
    parser.add_argument("--dataset_path", default="dataset", help="The dataset directory to write.")
    parser.add_argument("--spm_model_path", help="The SentencePiece tokenizer model (LLaMA-1/2).")
    parser.add_argument("--tokenizer_path", help="A Hugging Face tokenizer.json, or a directory holding one with its "
                        "tokenizer_config.json (Llama-3, Qwen; GPT-2's vocab.json + merges.txt too); a BERT "
                        "vocab.txt, or a directory with one and no tokenizer.json, is read by WordPiece.")
    parser.add_argument("--vocab_path", help="A BERT WordPiece vocab.txt (TencentPretrain's flag; instead of "
                        "--tokenizer_path).")
    parser.add_argument("--tokenizer", choices=TOKENIZERS.names(), help="The tokenizer kind (default: sentencepiece "
                        "with --spm_model_path, bert with --vocab_path or a vocab.txt, else huggingface).")
    parser.add_argument("--data_processor", choices=DATA_PROCESSORS.names(), default="lm")
    parser.add_argument("--seq_length", type=int, default=128, help="Tokens a sample feeds the model (plus one).")
    parser.add_argument("--corpus_format", choices=("auto", "text", "jsonl", "json", "documents"), default="auto",
                        help="auto: a JSON array if the file starts with '[', JSONL if it starts with '{' and is "
                             "named *.json/*.jsonl, else text (lm, mlm, t5 read text/jsonl, alpaca json/jsonl; bert "
                             "and bart read documents: one sentence a line, a blank line between documents).")
    parser.add_argument("--json_format_corpus", action="store_true", help="TencentPretrain's flag: --corpus_format "
                        "jsonl.")
    parser.add_argument("--seed", type=int, default=7, help="bert: seed of the sentence pairing (the masking is "
                        "done by pretrain.py's loader with its own --seed).")
    parser.add_argument("--tail", choices=TAILS, default="drop", help="lm, mlm: drop the last partial sample, or keep "
                        "it padded (the padding never counts in the loss).")
    parser.add_argument("--whole_word_masking", action="store_true", help="bert, mlm: the loader masks whole words: "
                        "a word's continuation pieces (WordPiece's ##, SentencePiece's pieces without a leading "
                        "space) are chosen with its first piece.")
    parser.add_argument("--span_masking", action="store_true", help="bert, mlm: the loader masks spans of "
                        "consecutive tokens (SpanBERT's, TencentPretrain's), lengths drawn from a geometric "
                        "distribution.")
    parser.add_argument("--span_geo_prob", type=float, default=0.2, help="span masking: the geometric "
                        "distribution's parameter.")
    parser.add_argument("--span_max_length", type=int, default=10, help="span masking: the longest span.")
    parser.add_argument("--tgt_seq_length", type=int, help="t5, bart: the decoder's length (default: what the "
                        "longest target needs; shorter is refused).")
    parser.add_argument("--noise_density", type=float, help="t5: the fraction of tokens corrupted (T5's "
                        f"noise_density, default {NOISE_DENSITY}).")
    parser.add_argument("--mean_noise_span_length", type=float, help="t5: the mean length of a corrupted span "
                        f"(T5's, default {MEAN_NOISE_SPAN_LENGTH}).")
    parser.add_argument("--mask_ratio", type=float, help=f"bart: the fraction of tokens masked (default {MASK_RATIO}).")
    parser.add_argument("--poisson_lambda", type=float, help="bart: the mean of the Poisson distribution of masked "
                        f"span lengths (default {POISSON_LAMBDA}).")
    parser.add_argument("--dynamic_masking", action="store_true", help="TencentPretrain's flag, accepted: the "
                        "loader always masks (bert, mlm) and corrupts (t5, bart) afresh every epoch.")
    parser.add_argument("--template", default="alpaca",
                        help=f"alpaca: the prompt template ({', '.join(TEMPLATES.names())}); chat: one of those, a "
                             "Jinja chat template file, a tokenizer_config.json with a chat_template, or a Hugging "
                             "Face directory holding one.")
    parser.add_argument("--loss_on", choices=LOSS_ON, default="all",
                        help="chat: the loss on every assistant turn and its end token, or on the last turn only.")
    for name in SPECIAL_TOKENS:
        parser.add_argument(f"--{name}_token", help=f"The {name} token, a piece or an id (default: the model's).")
    parser.add_argument("--special_tokens_path", help='JSON file of special tokens, e.g. {"pad": "<unk>"}; the '
                        "--*_token flags override it.")
    parser.add_argument("--config_path", help="The model config the dataset is for: its vocab_size must fit the "
                        "tokenizer (checked before preprocessing).")
    parser.add_argument("--pretrained_model_path", help="The checkpoint the dataset is for: its embedding and head "
                        "rows must fit the tokenizer (checked before preprocessing).")
    parser.add_argument("--processes_num", type=int, default=1, help="Worker processes.")
    parser.add_argument("--chunk_size", type=int, default=1024, help="Records per worker task.")
    parser.add_argument("--skip_invalid", action="store_true", help="Skip and count invalid records instead of "
                        "stopping at the first.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dataset directory.")
    return parser


def special_tokens(args: argparse.Namespace) -> tuple[tuple[str, int | str], ...]:
    """Overrides from --special_tokens_path, then the --*_token flags; all-digit values are ids."""
    tokens = read_special_tokens(args.special_tokens_path) if args.special_tokens_path else {}
    for name in SPECIAL_TOKENS:
        value = getattr(args, f"{name}_token")
        if value is not None:
            tokens[name] = int(value) if value.isdigit() else value
    return tuple(sorted(tokens.items()))


def make_spec(args: argparse.Namespace) -> ProcessorSpec:
    """The processor spec the command line describes (the corpus format resolved)."""
    if args.seq_length < 4:
        raise InputError(f"--seq_length must be at least 4, got {args.seq_length}")
    requested = "jsonl" if args.json_format_corpus else args.corpus_format
    allowed = DATA_PROCESSORS.get(args.data_processor).formats
    if args.data_processor == "alpaca" and args.template not in TEMPLATES:
        raise InputError(f"--template {args.template!r}: alpaca takes one of {', '.join(TEMPLATES.names())}")
    template = args.template
    if args.data_processor == "chat":
        with naming("--template", args.template):
            load_template(args.template)  # an unreadable or invalid template stops here, before any work
            template = args.template if args.template in TEMPLATES else str(Path(args.template).resolve())
    if args.whole_word_masking and args.data_processor not in ("bert", "mlm"):
        raise InputError(f"--whole_word_masking is for --data_processor bert or mlm, not {args.data_processor}")
    if args.span_masking and args.data_processor not in ("bert", "mlm", "t5", "bart"):
        raise InputError(f"--span_masking is for --data_processor bert, mlm, t5 or bart, not {args.data_processor}")
    if args.whole_word_masking and args.span_masking:
        raise InputError("give --whole_word_masking or --span_masking, not both")
    if args.span_masking and not (0 < args.span_geo_prob <= 1 and args.span_max_length >= 1):
        raise InputError(f"--span_geo_prob {args.span_geo_prob} must be in (0, 1] and --span_max_length "
                         f"{args.span_max_length} at least 1")
    source = tokenizer_source(args.spm_model_path, args.tokenizer_path, vocab_path=args.vocab_path)
    return ProcessorSpec(
        processor=args.data_processor, tokenizer=args.tokenizer or source.name, tokenizer_path=source.path,
        special_tokens=special_tokens(args), seq_length=args.seq_length,
        corpus_format=resolve_format(args.corpus_path, requested, allowed), tail=args.tail, template=template,
        loss_on=args.loss_on, seed=args.seed, whole_word_masking=args.whole_word_masking,
        span=(args.span_geo_prob, args.span_max_length) if args.span_masking else None, noise=noise_of(args),
        tgt_seq_length=args.tgt_seq_length,
    )


def noise_of(args: argparse.Namespace) -> tuple[float, float] | None:
    """t5: (noise density, mean span length); bart: (mask ratio, Poisson lambda); None for the other processors.
    InputError for a noise flag given to a processor that does not read it."""
    flags = {"t5": (("noise_density", NOISE_DENSITY), ("mean_noise_span_length", MEAN_NOISE_SPAN_LENGTH)),
             "bart": (("mask_ratio", MASK_RATIO), ("poisson_lambda", POISSON_LAMBDA))}
    for processor, pair in flags.items():
        for name, _ in pair:
            if getattr(args, name) is not None and args.data_processor != processor:
                raise InputError(f"--{name} is for --data_processor {processor}, not {args.data_processor}")
    if args.tgt_seq_length is not None and args.data_processor not in flags:
        raise InputError(f"--tgt_seq_length is for --data_processor t5 or bart, not {args.data_processor}")
    if args.data_processor not in flags:
        return None
    return tuple(default if getattr(args, name) is None else getattr(args, name)
                 for name, default in flags[args.data_processor])


def check_model_vocab(args: argparse.Namespace) -> None:
    """With --config_path or --pretrained_model_path: the tokenizer must fit the model (``vocab.check_vocab``)."""
    if not (args.config_path or args.pretrained_model_path):
        return
    config = ModelConfig.from_json(args.config_path) if args.config_path else None
    rows = checkpoint_vocab_rows(args.pretrained_model_path) if args.pretrained_model_path else {}
    tokenizer = open_tokenizer(args.spm_model_path, args.tokenizer_path, vocab_path=args.vocab_path)
    check_vocab(tokenizer.vocab_size, str(tokenizer.model_path), rows,
                args.pretrained_model_path or args.config_path, config)


def main(argv: list[str] | None = None) -> dict:
    """Run preprocessing; returns the dataset metadata. Bad input raises an InputError (run_cli: status 1)."""
    args = build_parser().parse_args(argv)
    with naming("--corpus_path", args.corpus_path), naming("--spm_model_path", args.spm_model_path), \
            naming("--tokenizer_path", args.tokenizer_path), naming("--vocab_path", args.vocab_path), \
            naming("--special_tokens_path", args.special_tokens_path), naming("--config_path", args.config_path), \
            naming("--pretrained_model_path", args.pretrained_model_path):
        check_model_vocab(args)
        report = build_dataset(make_spec(args), args.corpus_path, args.dataset_path,
                               processes_num=args.processes_num, chunk_size=args.chunk_size,
                               skip_invalid=args.skip_invalid, overwrite=args.overwrite)
    counts = report["counts"]
    print(f"wrote {args.dataset_path}: {counts['samples']} samples, {counts['tokens']} tokens from "
          f"{counts['documents']} documents in {report['seconds']:.1f}s "
          f"({counts['tokens'] / max(report['seconds'], 1e-9):,.0f} tokens/s)")
    print(json.dumps(counts, sort_keys=True))
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
