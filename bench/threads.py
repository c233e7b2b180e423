"""Batch-1 decoding on one and several cores, side by side in one run: our engine decoding in PyTorch (what it did
before native decoding, and still does where that is unavailable) and natively (``generation/native/``, what
``--threads`` gives run_llama.py, the server and evaluation), each on 1 and ``--threads`` threads, and llama.cpp's
f32 on the same weights at the same thread counts when llama-cpp-python is installed.

One prompt of 48 random tokens, greedy, no eos, float32 everywhere (llama.cpp with an f32 key/value cache, our model
exported by our own GGUF writer). Decode tok/s = ``(N - 1) / (t(N tokens) - t(1 token))``, each time the fastest of
``--repeats`` runs, the variants alternating (the machine may be shared: the minimum is the least disturbed run;
``bench/generate.py``'s ``measure``).
Ratios are against our PyTorch one-thread figure ("x py1") and our native one-thread figure ("x nat1"); "same
tokens": each variant's tokens equal ours in PyTorch on one thread. With llama.cpp, the last column compares native
decoding with llama.cpp's at ``--threads`` threads twice: the ratio of the fastest runs, and the median (and range)
of the ratios within a round, where the two ran seconds apart (``bench/generate.py``'s ``rounds``): the host's load
moves every figure by 10-30% between minutes, and a ratio within a round cancels most of it. Run:
``python -m bench.threads`` (99M model, 1 and 2 threads), ``--sizes tiny 100m``, ``--no_llama_cpp``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.generate import decode_rate, fastest, prompts_for, rounds, size_config
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.native import NativeBackend
from tencentpretrain.generation.weights.layout import LAYOUTS
from tencentpretrain.llamacpp import add_repack_arg
from tencentpretrain.model import build_model


def engine_runner(model, threads: int, native: bool):
    """A function generating ``n`` tokens of a prompt with an engine over ``model`` on ``threads`` threads."""

    def run(prompt: list[int], n: int) -> list[int]:
        return Engine(model, choose_backend(model, threads, native=native)).generate([prompt], n)[0]

    return run


def llama_cpp_runner(path: Path, threads: int, context: int, repack: str = "auto"):
    """The same with llama.cpp (``bench/generate_llama_cpp.py``) on ``threads`` threads."""
    from bench.generate_llama_cpp import llama_cpp_runner as runner

    runners = {}

    def run(prompt: list[int], n: int) -> list[int]:
        key = tuple(prompt)
        if key not in runners:
            runners[key] = runner(path, prompt, threads, context, repack)
        return runners[key](n)[0]

    return run


def bench_size(name: str, args, temporary: Path) -> str:
    torch.manual_seed(0)
    model = build_model(size_config(name)).eval()
    prompt = prompts_for(1, model.vocab_size)[0]
    model = prepare_for_inference(model, layout=args.layout, batch_size=1)
    counts = sorted({1, args.threads})
    variants = {}
    for threads in counts:
        variants[f"PyTorch {threads}"] = engine_runner(model, threads, native=False)
    for threads in counts:
        variants[f"native {threads}"] = engine_runner(model, threads, native=True)
    backend = choose_backend(model, 1)
    if not isinstance(backend, NativeBackend):
        raise SystemExit(f"native decoding is unavailable here: {backend.description}")
    if args.llama_cpp:
        from bench.generate_llama_cpp import export

        path = export(model, temporary)["f32"]
        for threads in counts:
            variants[f"llama.cpp {threads}"] = llama_cpp_runner(path, threads, len(prompt) + args.new_tokens + 8,
                                                                args.llama_cpp_repack)
    reference = variants["PyTorch 1"](prompt, args.new_tokens)
    same = {label: run(prompt, args.new_tokens) == reference for label, run in variants.items()}
    runners = {label: (lambda n, run=run: run(prompt, n)) for label, run in variants.items()}
    times = rounds(runners, args.new_tokens, args.repeats)
    per_round = {label: [decode_rate(first, full, 1, args.new_tokens) for first, full in runs]
                 for label, runs in times.items()}  # decode tok/s of each round
    speed = {label: decode_rate(*fastest(runs), 1, args.new_tokens) for label, runs in times.items()}
    py1, nat1 = speed["PyTorch 1"], speed["native 1"]
    cells = [f"{speed[label]:.1f} ({speed[label] / py1:.2f}x py1, {speed[label] / nat1:.2f}x nat1)"
             for label in variants]
    if args.llama_cpp:
        ours, theirs = per_round[f"native {args.threads}"], per_round[f"llama.cpp {args.threads}"]
        paired = sorted(a / b for a, b in zip(ours, theirs))
        cells.append(f"{speed[f'native {args.threads}'] / speed[f'llama.cpp {args.threads}']:.2f}x; "
                     f"{statistics.median(paired):.2f}x ({paired[0]:.2f}-{paired[-1]:.2f})")
    row = f"| {name} | " + " | ".join(cells) + f" | {all(same.values())} |"
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100m"], choices=("tiny", "100m"))
    parser.add_argument("--threads", type=int, default=2, help="the thread count compared with one thread")
    parser.add_argument("--layout", default="row", choices=LAYOUTS,
                        help="weight layout of our engine (row: what run_llama.py and the server pick when they "
                             "decode natively)")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no_llama_cpp", dest="llama_cpp", action="store_false",
                        help="leave llama.cpp out (it is left out anyway without llama-cpp-python)")
    add_repack_arg(parser)
    args = parser.parse_args(argv)
    args.llama_cpp = args.llama_cpp and importlib.util.find_spec("llama_cpp") is not None
    counts = sorted({1, args.threads})
    labels = ([f"PyTorch {t}" for t in counts] + [f"native {t}" for t in counts]
              + ([f"llama.cpp {t}" for t in counts] if args.llama_cpp else []))
    header = "| model | " + " | ".join(f"{label} thread{'s' * (t > 1)} tok/s" for label, t in
                                       ((label, int(label.rsplit(" ", 1)[1])) for label in labels))
    if args.llama_cpp:
        header += f" | native / llama.cpp, {args.threads} threads: fastest; within a round, median (range)"
    header += " | same tokens |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as tmp:
        return [bench_size(name, args, Path(tmp)) for name in args.sizes]


if __name__ == "__main__":
    sys.exit(main() and 0)
