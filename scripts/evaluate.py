"""Evaluate a model: perplexity / bits per character of a corpus, or C-Eval / MMLU multiple-choice accuracy.

Perplexity (every document scored whole by rolling windows of at most --seq_length tokens, each token once)::

    python scripts/evaluate.py --task perplexity --load_model_path models/llama-7b.bin \\
        --config_path models/llama/7b_config.json --spm_model_path tokenizer.model \\
        --corpus_path dev.jsonl --seq_length 2048 --batch_size 4 --output_path ppl.json

Multiple choice (one CSV per subject; 5 examples from the dev split in each prompt)::

    python scripts/evaluate.py --task choice --load_model_path hf_dir/ \\
        --test_path ceval-exam/val --dev_path ceval-exam/dev --shots 5 --output_path ceval.json

Definitions and the comparison with lm-evaluation-harness: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys

from tencentpretrain.cli import run_cli
from tencentpretrain.errors import InputError
from tencentpretrain.evaluation.choice import CHOICE_TOKENS, PROMPT_STYLES
from tencentpretrain.evaluation.run import (
    read_choice_inputs,
    read_perplexity_inputs,
    run_choice,
    run_perplexity,
    write_json,
)
from tencentpretrain.generation.options import add_load_args, load_engine

TASKS = {"perplexity": (read_perplexity_inputs, run_perplexity), "choice": (read_choice_inputs, run_choice)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="what to evaluate")
    add_load_args(parser)
    group = parser.add_argument_group("both tasks")
    group.add_argument("--seq_length", type=int,
                       help="most tokens per forward pass (default: the model's max_seq_length)")
    group.add_argument("--batch_size", type=int, default=1, help="windows or prompts per forward pass")
    group.add_argument("--output_path", help="write the results here as JSON")
    group = parser.add_argument_group("perplexity")
    group.add_argument("--corpus_path", help="text (one document a line), JSONL or JSON array of {\"text\": ...}")
    group.add_argument("--corpus_format", choices=("auto", "text", "jsonl", "json"), default="auto",
                       help="how to read --corpus_path (auto: from its first character and suffix)")
    group = parser.add_argument_group("choice")
    group.add_argument("--test_path", help="a CSV file or a directory of them, one per subject (<subject>_val.csv)")
    group.add_argument("--dev_path", help="the examples: a directory of <subject>_dev.csv files, or one file")
    group.add_argument("--shots", type=int, default=0, help="examples from the dev split put before each question")
    group.add_argument("--prompt_language", choices=sorted(PROMPT_STYLES), default="zh",
                       help="zh: C-Eval's Chinese prompt; en: MMLU's English prompt")
    group.add_argument("--choice_token", choices=CHOICE_TOKENS, default="continuation",
                       help="which token stands for a letter: the one it becomes after the answer cue, or "
                            "encode(letter)[0] as C-Eval's official LLaMA evaluator reads it")
    group.add_argument("--subject_mapping",
                       help="JSON {subject: [English name, Chinese name, category]} (C-Eval's subject_mapping.json) "
                            "for the names in the prompts and per-category averages")
    group.add_argument("--submission_path",
                       help="also write the predictions as {subject: {id: letter}} (C-Eval's submission format)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag errors that need no file: exit status 2 with argparse's usage line."""
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.seq_length is not None and args.seq_length < 2:
        parser.error("--seq_length must be >= 2")
    if args.task == "perplexity" and not args.corpus_path:
        parser.error("--task perplexity needs --corpus_path")
    if args.task == "choice" and not args.test_path:
        parser.error("--task choice needs --test_path")
    if args.shots < 0:
        parser.error("--shots must be >= 0")
    if args.shots and not args.dev_path:
        parser.error("--shots needs --dev_path (the examples come from the dev split)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    read, run = TASKS[args.task]
    inputs = read(args)  # a malformed file stops the run before the model is loaded
    try:
        engine, tokenizer = load_engine(args, args.batch_size, decoding=False)
    except InputError:
        raise
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise InputError(f"--load_model_path {args.load_model_path}: {err}") from None
    results = run(args, engine.model, tokenizer, inputs)
    if args.output_path:
        write_json(args.output_path, results)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
