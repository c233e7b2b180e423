"""The two tasks of ``scripts/evaluate.py``: read the files the options name, evaluate, print a table, return JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from tencentpretrain.checkpoint import atomic_path
from tencentpretrain.cli import naming
from tencentpretrain.errors import InputError
from tencentpretrain.evaluation.choice import ChoiceScorer, evaluate_subject, summarize
from tencentpretrain.evaluation.perplexity import evaluate_perplexity
from tencentpretrain.evaluation.readers import Question, read_choice_file, read_documents, subject_files
from tencentpretrain.jsonfile import read_json
from tencentpretrain.model import Model


def context_length(args: argparse.Namespace, model: Model) -> int:
    """``--seq_length``, or the model's ``max_seq_length`` when not given; never longer than the latter."""
    limit = model.config.max_seq_length
    if args.seq_length is None:
        return limit
    if args.seq_length > limit:
        raise InputError(f"--seq_length {args.seq_length} exceeds the model's max_seq_length {limit}")
    return args.seq_length


def read_perplexity_inputs(args: argparse.Namespace) -> list[str]:
    """The documents of ``--corpus_path`` (read before the model is loaded, so a bad file fails fast)."""
    with naming("--corpus_path", args.corpus_path):
        return read_documents(args.corpus_path, args.corpus_format)


def run_perplexity(args: argparse.Namespace, model: Model, tokenizer, documents: list[str]) -> dict:
    """Score the documents; print the figures; return them with the settings."""
    result = evaluate_perplexity(model, tokenizer, documents, context_length(args, model), args.batch_size)
    figures = result.to_dict()
    print_table(["quantity", "value"], [[name, _fmt(value)] for name, value in figures.items()])
    return {"task": "perplexity", "model": args.load_model_path, "corpus": args.corpus_path, **figures}


@dataclass(frozen=True)
class ChoiceInputs:
    """What ``--task choice`` reads: questions and examples by subject, the names in the prompts, categories."""

    questions: dict[str, list[Question]]
    examples: dict[str, list[Question]]
    names: dict[str, str]
    categories: dict[str, str]


def read_choice_inputs(args: argparse.Namespace) -> ChoiceInputs:
    """Every file ``--task choice`` needs, read and checked before the model is loaded."""
    with naming("--test_path", args.test_path):
        tests = subject_files(args.test_path, "--test_path")
        questions = {subject: read_choice_file(path, need_answers=False) for subject, path in tests.items()}
    with naming("--subject_mapping", args.subject_mapping):
        names, categories = subject_names(args.subject_mapping, args.prompt_language)
    names = {subject: names.get(subject, subject.replace("_", " ")) for subject in tests}
    return ChoiceInputs(questions, read_examples(args, list(tests)), names, categories)


def run_choice(args: argparse.Namespace, model: Model, tokenizer, inputs: ChoiceInputs) -> dict:
    """Answer every subject; print accuracies; return them with the predictions."""
    scorer = ChoiceScorer(tokenizer, args.prompt_language, args.choice_token, context_length(args, model))
    results = [evaluate_subject(model, scorer, subject, questions, inputs.examples.get(subject, []),
                                inputs.names[subject], args.batch_size)
               for subject, questions in inputs.questions.items()]
    averages = summarize(results, inputs.categories)
    rows = [[r.name, len(r.predictions), _fmt(r.accuracy)] for r in results]
    rows += [[f"average ({group}, macro / micro)", a["questions"], f"{_fmt(a['macro_accuracy'])} / "
              f"{_fmt(a['micro_accuracy'])}"] for group, a in averages.items()]
    print_table(["subject", "questions", "accuracy"], rows)
    if args.submission_path:
        write_json(args.submission_path, {r.name: r.predictions for r in results})
    return {"task": "choice", "model": args.load_model_path, "prompt_language": args.prompt_language,
            "shots": args.shots, "choice_token": args.choice_token, "seq_length": scorer.seq_length,
            "average": averages.pop("all"), "categories": averages,
            "subjects": {r.name: r.to_dict() for r in results}}


def read_examples(args: argparse.Namespace, subjects: list[str]) -> dict:
    """The first ``--shots`` questions of each subject's dev file (none without ``--shots``)."""
    if not args.shots:
        return {}
    files = subject_files(args.dev_path, "--dev_path")
    examples = {}
    for subject in subjects:
        if subject not in files:
            raise InputError(f"--dev_path {args.dev_path}: no dev file for subject {subject!r} "
                             f"(expected {subject}_dev.csv)")
        with naming("--dev_path", args.dev_path):
            questions = read_choice_file(files[subject], need_answers=True)
        if len(questions) < args.shots:
            raise InputError(f"--shots {args.shots}: {files[subject]} has only {len(questions)} questions")
        examples[subject] = questions[:args.shots]
    return examples


def subject_names(path: str | None, language: str) -> tuple[dict[str, str], dict[str, str]]:
    """({subject: name in the prompt's language}, {subject: category}) from a C-Eval ``subject_mapping.json``."""
    if path is None:
        return {}, {}
    mapping = read_json(path, InputError)
    if not isinstance(mapping, dict) or not all(
            isinstance(v, list) and len(v) >= 2 and all(isinstance(x, str) for x in v) for v in mapping.values()):
        raise InputError(f"--subject_mapping {path}: expected {{subject: [English name, Chinese name, category]}}")
    names = {subject: entry[1 if language == "zh" else 0] for subject, entry in mapping.items()}
    categories = {subject: entry[2] for subject, entry in mapping.items() if len(entry) > 2}
    return names, categories


def write_json(path: str, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def print_table(header: list[str], rows: list[list]) -> None:
    """A plain-text table on stdout, columns left-aligned."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(lines), flush=True)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
