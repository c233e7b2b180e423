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
import re
import sys
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_path
from tencentpretrain.generation import Engine, SamplingParams, load_generation_model, quantize_int8
from tencentpretrain.generation.chat import ChatSession, encode_prompt, fit_prompt, generate_text
from tencentpretrain.registry import TEMPLATES
from tencentpretrain.tokenizers import SentencePieceTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by this script and the server: the model, tokenizer, device and sampling."""
    group = parser.add_argument_group("model")
    group.add_argument("--load_model_path", required=True,
                       help="TencentPretrain .bin/.safetensors checkpoint, or a Hugging Face LLaMA directory")
    group.add_argument("--config_path", help="model JSON config (required for a checkpoint file)")
    group.add_argument("--spm_model_path", help="SentencePiece model (default: tokenizer.model of a HF directory)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device (default: cuda when available, else cpu)")
    group.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                       help="weight dtype (default: float32 on cpu, bfloat16 on cuda)")
    group.add_argument("--int8", action="store_true",
                       help="weight-only int8 linear layers, one scale per output channel (about 4x less memory)")
    group = parser.add_argument_group("generation")
    group.add_argument("--seq_length", type=int, default=512, help="context size: prompt plus new tokens")
    group.add_argument("--max_new_tokens", type=int, default=256, help="most tokens generated per prompt")
    group.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 means greedy")
    group.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    group.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling mass (1.0: off)")
    group.add_argument("--repetition_penalty", type=float, default=1.0, help="CTRL repetition penalty (1.0: off)")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when this text is generated (repeatable); eos always stops")
    group.add_argument("--seed", type=int, default=42, help="seed of the sampling random generator")
    group.add_argument("--template", choices=TEMPLATES.names(), default="none",
                       help="prompt template the model was fine-tuned with (none for a base model)")


def build_args(argv: list[str] | None) -> argparse.Namespace:
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
    if args.max_new_tokens < 1 or args.max_new_tokens >= args.seq_length:
        parser.error(f"--max_new_tokens must be in [1, --seq_length) = [1, {args.seq_length})")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    try:
        args.sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    except ValueError as err:
        parser.error(str(err))
    return args


def load_engine(args: argparse.Namespace) -> tuple[Engine, SentencePieceTokenizer]:
    """The engine and tokenizer the options describe."""
    spm = args.spm_model_path
    if spm is None and Path(args.load_model_path).is_dir():
        spm = Path(args.load_model_path) / "tokenizer.model"
    if spm is None:
        raise ValueError("--spm_model_path is required for a checkpoint file")
    tokenizer = SentencePieceTokenizer(spm)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = load_generation_model(args.load_model_path, args.config_path, device=args.device, dtype=dtype)
    if model.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"{spm} has {tokenizer.vocab_size} pieces but the model only {model.vocab_size} rows")
    if args.int8:
        quantize_int8(model)
    return Engine(model, eos_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id), tokenizer


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; a literal backslash-n is a newline and a doubled backslash a backslash."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", line) for line in lines]


def escape(text: str) -> str:
    """The inverse of ``read_prompts``' unescaping: one line per text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def run_file(args: argparse.Namespace, engine: Engine, tokenizer) -> list[str]:
    """Generate for every prompt of ``--test_path``; write ``--prediction_path`` atomically."""
    template = TEMPLATES.get(args.template)
    prompts = read_prompts(args.test_path)
    budget = args.seq_length - args.max_new_tokens
    outputs = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start:start + args.batch_size]
        ids = [fit_prompt(encode_prompt(tokenizer, template.render(p)), budget) for p in batch]
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
            print("Assistant: ", end="", flush=True)
            session.ask(question, on_text=lambda piece: print(piece, end="", flush=True), seed=None)
            print(flush=True)
    return session


def main(argv: list[str] | None = None, read=input):
    """Entry point; returns the generated texts (file mode) or the chat session (interactive)."""
    args = build_args(argv)
    try:
        engine, tokenizer = load_engine(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        sys.exit(f"error: {err}")
    if args.interactive:
        return run_interactive(args, engine, tokenizer, read)
    return run_file(args, engine, tokenizer)


if __name__ == "__main__":
    main()
