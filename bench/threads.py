"""Batch-1 decoding on several cores: our engine on one thread, on ``--threads`` PyTorch threads, and on
``--threads`` with its one-row products split over them (``generation/threads.py``, what ``--threads`` does in
the server), and on ``--threads`` with the ``packed`` weight layout (oneDNN, which threads one-row products itself),
in one run.

One prompt of 48 random tokens, greedy, no eos; decode tok/s = ``(N - 1) / (t(N tokens) - t(1 token))``, each
time the fastest of ``--repeats`` runs, the variants alternating (the machine may be shared: the minimum is the least
disturbed run). "same tokens": every variant's tokens equal the one-thread ones. Run: ``python bench/threads.py``
(99M model, 2 threads), ``--sizes tiny 100m``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import prompts_for, size_config  # noqa: E402

from tencentpretrain.generation import Engine, prepare_for_inference  # noqa: E402
from tencentpretrain.generation.layout import packing_available  # noqa: E402
from tencentpretrain.generation.threads import use_threads  # noqa: E402
from tencentpretrain.model import build_model  # noqa: E402


def timed_runs(engine: Engine, prompt: list[int], threads: int, new_tokens: int) -> tuple[float, float, list[int]]:
    """(seconds for 1 token, seconds for ``new_tokens``, the tokens) on ``threads`` PyTorch threads."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    engine.generate([prompt], 1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    tokens = engine.generate([prompt], new_tokens)[0]
    return first, time.perf_counter() - start, tokens


def prepared(model, layout: str = "column") -> Engine:
    """An engine over ``model`` laid out for one prompt at a time."""
    return Engine(prepare_for_inference(model, layout=layout, batch_size=1))


def bench_size(name: str, args) -> str:
    torch.manual_seed(0)
    model = build_model(size_config(name)).eval()
    prompt = prompts_for(1, model.vocab_size)[0]
    split = prepared(copy.deepcopy(model))
    use_threads(split.model, args.threads)
    t = args.threads
    variants = {"1 thread": (prepared(model), 1), f"{t} threads": (prepared(copy.deepcopy(model)), t),
                f"{t} threads split": (split, t)}
    if packing_available():
        variants[f"{t} threads packed"] = (prepared(copy.deepcopy(model), "packed"), t)
    times = {label: ([], []) for label in variants}
    tokens = {label: timed_runs(engine, prompt, threads, args.new_tokens)[2]  # warm-up
              for label, (engine, threads) in variants.items()}
    for _ in range(args.repeats):
        for label, (engine, threads) in variants.items():
            first, full, _ = timed_runs(engine, prompt, threads, args.new_tokens)
            times[label][0].append(first)
            times[label][1].append(full)
    best = {label: (args.new_tokens - 1) / (min(full) - min(first)) for label, (first, full) in times.items()}
    one = best["1 thread"]
    same = all(t == tokens["1 thread"] for t in tokens.values())
    cells = " | ".join(f"{best[label]:.1f} ({best[label] / one:.2f}x)" for label in variants)
    row = f"| {name} | {cells} | {same} |"
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100m"], choices=("tiny", "100m"))
    parser.add_argument("--threads", type=int, default=2, help="threads of the second and third variants")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    t = args.threads
    header = (f"| model | 1 thread tok/s | {t} threads tok/s | {t} threads split tok/s | "
              + (f"{t} threads packed tok/s | " if packing_available() else "") + "same tokens |")
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    return [bench_size(name, args) for name in args.sizes]


if __name__ == "__main__":
    sys.exit(main() and 0)
