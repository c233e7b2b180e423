"""Generate with a LLaMA-family model: a file of prompts, or an interactive multi-turn chat.

File mode (one prompt per line; literal ``\\n`` in a line reads as a newline; the output file has one line per
prompt, the generated text with newlines written as ``\\n``)::

    python inference/run_llama.py --load_model_path models/chatllama_7b.bin \\
        --config_path models/llama/7b_config.json --spm_model_path tokenizer.model \\
        --test_path prompts.txt --prediction_path result.txt --seq_length 512

Chat mode (``--interactive``): type a message, the answer streams back; ``/reset`` forgets the conversation,
``/exit`` or end of input quits. The conversation is rendered through ``--template`` and its oldest turns are
dropped to fit ``--seq_length``.

``--load_model_path`` may also be a Hugging Face LLaMA directory (converted on the fly; its tokenizer.model is
used when ``--spm_model_path`` is not given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tencentpretrain.checkpoint import atomic_path
from tencentpretrain.cli import run_cli
from tencentpretrain.data.chat_template import load_template
from tencentpretrain.generation import Engine
from tencentpretrain.generation.chat import ChatSession, fit_prompt, question_ids
from tencentpretrain.generation.finish import prompt_budget
from tencentpretrain.generation.options import add_model_args, load_engine, sampling_from_args
from tencentpretrain.generation.text import generate_text
from tencentpretrain.prompts import escape, read_prompts


def build_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the options; ``args.sampling`` holds the sampling settings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    group = parser.add_argument_group("input and output")
    group.add_argument("--test_path", help="prompts, one per line")
    group.add_argument("--prediction_path", help="where to write the generated texts, one line per prompt")
    group.add_argument("--batch_size", type=int, default=1, help="prompts generated together (left-padded)")
    group.add_argument("--interactive", action="store_true", help="multi-turn chat on the terminal")
    group.add_argument("--quiet", action="store_true", help="do not stream generated text to the terminal")
    args = parser.parse_args(argv)
    if not args.interactive and not (args.test_path and args.prediction_path):
        parser.error("give --test_path and --prediction_path, or --interactive")
    if args.test_path and not args.interactive and not Path(args.test_path).is_file():
        parser.error(f"--test_path {args.test_path}: " + ("is a directory, expected a file of prompts"
                                                          if Path(args.test_path).is_dir() else "no such file"))
    if args.prediction_path and Path(args.prediction_path).is_dir():
        parser.error(f"--prediction_path {args.prediction_path}: is a directory, expected a file to write")
    if args.max_new_tokens < 1 or args.max_new_tokens >= args.seq_length:
        parser.error(f"--max_new_tokens must be in [1, --seq_length) = [1, {args.seq_length})")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    args.sampling = sampling_from_args(parser, args)
    return args


def fit_prompts(ids: list[list[int]], budget: int, first: int, args: argparse.Namespace) -> list[list[int]]:
    """Cut over-long prompts to ``budget`` tokens (keeping bos and the end) and say so on stderr."""
    fitted = [fit_prompt(p, budget) for p in ids]
    for i, (before, after) in enumerate(zip(ids, fitted)):
        if len(after) < len(before):
            print(f"warning: prompt {first + i + 1} of {args.test_path} has {len(before)} tokens; cut "
                  f"{len(before) - len(after)} from its start (kept bos and the last {budget - 1}) to fit "
                  f"--seq_length {args.seq_length} - --max_new_tokens {args.max_new_tokens}", file=sys.stderr,
                  flush=True)
    return fitted


def run_file(args: argparse.Namespace, engine: Engine, tokenizer, prompts: list[str] | None = None) -> list[str]:
    """Generate for every prompt of ``--test_path`` (or ``prompts``, read from it); write ``--prediction_path``
    atomically."""
    template = load_template(args.template)
    prompts = read_prompts(args.test_path) if prompts is None else prompts
    budget = prompt_budget(args.seq_length, args.max_new_tokens)
    outputs = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        ids = fit_prompts([question_ids(tokenizer, template, p) for p in batch], budget, start, args)
        stream_row = None if args.quiet or len(batch) > 1 else (lambda _row, piece: print(piece, end="", flush=True))
        if stream_row is not None:
            print(f"\n>>> {batch[0]}\n", flush=True)
        completions = generate_text(engine, tokenizer, ids, args.max_new_tokens, args.sampling, args.stop,
                                    args.seed, stream_row)
        outputs += [c.text for c in completions]
        if not args.quiet and len(batch) > 1:
            print(f"{start + len(batch)}/{len(prompts)} prompts", file=sys.stderr, flush=True)
    with atomic_path(args.prediction_path) as tmp:
        tmp.write_text("".join(escape(text) + "\n" for text in outputs), encoding="utf-8")
    return outputs


def warn_if_cut(args: argparse.Namespace, tokenizer, question: str) -> None:
    """Chat drops the oldest turns to fit; a message too long even alone loses its start: say how much."""
    budget = prompt_budget(args.seq_length, args.max_new_tokens)
    tokens = len(question_ids(tokenizer, args.template, question))
    if tokens > budget:
        print(f"(your message has {tokens} tokens with the template; its first {tokens - budget} are cut to fit "
              f"--seq_length {args.seq_length} - --max_new_tokens {args.max_new_tokens})", file=sys.stderr,
              flush=True)


def run_interactive(args: argparse.Namespace, engine: Engine, tokenizer, read=input) -> ChatSession:
    """Chat on the terminal until ``/exit`` or end of input."""
    session = ChatSession(engine, tokenizer, args.template, args.seq_length, args.max_new_tokens, args.sampling,
                          args.stop)
    print("Chat: /reset forgets the conversation, /exit quits.", flush=True)
    while True:
        try:
            question = read("\nUser: ").strip()
        except EOFError:
            break
        if question == "/exit":
            break
        if question == "/reset":
            session.reset()
            continue
        if question:
            warn_if_cut(args, tokenizer, question)
            print("Assistant: ", end="", flush=True)
            session.ask(question, on_text=lambda piece: print(piece, end="", flush=True), seed=None)
            print(flush=True)
    return session


def main(argv: list[str] | None = None, read=input):
    """Entry point; returns the generated texts (file mode) or the chat session (interactive).

    Bad input raises an InputError (``run_cli`` prints it and exits with status 1).
    """
    args = build_args(argv)
    prompts = None if args.interactive else read_prompts(args.test_path)  # before the slow model load
    engine, tokenizer = load_engine(args, 1 if args.interactive else args.batch_size)
    if args.interactive:
        return run_interactive(args, engine, tokenizer, read)
    return run_file(args, engine, tokenizer, prompts)


if __name__ == "__main__":
    sys.exit(run_cli(main))
