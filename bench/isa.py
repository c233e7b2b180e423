"""The two builds of the native kernel side by side in one process: ``native/csrc/`` compiled for AVX2 and for AVX-512
(``generation/native/``'s ``ISAS``), on a random model of a ``bench/generate.py`` size (default ``100m``), weights
row-major (what the engine decodes natively).

- **decoding**: batch-1 greedy decoding of a 48-token prompt, decode tok/s = ``(N - 1) / (t(N) - t(1))`` as in
  ``bench/threads.py``, on 1 and ``--threads`` threads;
- **passes**: single passes of the continuous batcher (``bench/batching.py``'s ``one_pass``, wall time, the least of
  3 calls per round): prompt chunks of ``--chunk`` tokens, running rows (a batched decoding step), and both.

Every round runs each build in turn (``bench/generate.py``'s ``rounds``), ``--repeats`` rounds. Each row gives both
builds' fastest figure and the median (and range) of the ratio within a round, where the two ran a second apart
(the host's load moves every figure between minutes; a ratio within a round cancels most of it): above 1, AVX-512
is faster. "same" says the builds gave the same tokens (decoding) or the same logits bit for bit (passes). The CPU
is printed first (``hardware.cpu().kind()``). Needs a CPU with AVX-512F.

Run: ``python -m bench.isa`` (100m, 1 and 2 threads), ``--size tiny`` for a quick look.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch

from bench.batching import one_pass
from bench.generate import decode_rate, fastest, prompts_for, rounds, size_config
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.native import ISAS, NativeBackend, choose_isa
from tencentpretrain.hardware import cpu
from tencentpretrain.model import build_model

NARROW, WIDE = "avx2", "avx512"


def paired(narrow: list[float], wide: list[float]) -> str:
    """The median (range) of the per-round ratios of two lists of speeds."""
    ratios = sorted(w / n for n, w in zip(narrow, wide))
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def decoding(engines: dict, threads: int, args) -> str:
    """The table row of batch-1 decoding on ``threads`` threads with each build (``engines[isa, threads]``)."""
    prompt = prompts_for(1, engines[NARROW, threads].model.vocab_size)[0]

    def runner(engine: Engine):
        def run(n: int) -> list[int]:
            return engine.generate([prompt], n)[0]

        return run

    runners = {isa: runner(engines[isa, threads]) for isa in (NARROW, WIDE)}
    same = runners[NARROW](args.new_tokens) == runners[WIDE](args.new_tokens)
    times = rounds(runners, args.new_tokens, args.repeats)
    per_round = {isa: [decode_rate(first, full, 1, args.new_tokens) for first, full in runs]
                 for isa, runs in times.items()}
    best = {isa: decode_rate(*fastest(runs), 1, args.new_tokens) for isa, runs in times.items()}
    return (f"| batch-1 decoding, {args.new_tokens} tokens (tok/s) | {threads} | {best[NARROW]:.1f} | "
            f"{best[WIDE]:.1f} | {best[WIDE] / best[NARROW]:.2f}x; {paired(per_round[NARROW], per_round[WIDE])} | "
            f"{same} |")


def a_pass(engines: dict, threads: int, rows: int, chunks: int, args) -> str:
    """The table row of one kind of batcher pass on ``threads`` threads with each build (``engines[isa, threads]``)."""

    def run(engine: Engine):
        torch.manual_seed(0)  # the same token ids for both builds
        return one_pass(engine, rows, chunks, args.chunk)

    def timed(engine: Engine) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            run(engine)
            best = min(best, time.perf_counter() - start)
        return best

    same = torch.equal(run(engines[NARROW, threads]), run(engines[WIDE, threads]))  # (and the warm-up)
    times = {NARROW: [], WIDE: []}
    for _ in range(args.repeats):
        for isa in (NARROW, WIDE):
            times[isa].append(timed(engines[isa, threads]))
    speed = {isa: [1 / t for t in ts] for isa, ts in times.items()}
    parts = ([f"{chunks} chunk{'s' * (chunks > 1)} of {args.chunk}"] if chunks else []) + \
        ([f"{rows} running rows"] if rows else [])
    return (f"| {' + '.join(parts)} (ms) | {threads} | {min(times[NARROW]) * 1e3:.1f} | {min(times[WIDE]) * 1e3:.1f} | "
            f"{min(times[NARROW]) / min(times[WIDE]):.2f}x; {paired(speed[NARROW], speed[WIDE])} | {same} |")


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"), help="model preset (bench/generate.py)")
    parser.add_argument("--threads", type=int, default=2, help="the thread count compared besides one thread")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="tokens of a prompt chunk")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (each build once per round)")
    parser.add_argument("--part", choices=("decoding", "passes", "both"), default="both")
    args = parser.parse_args(argv)
    choose_isa(cpu(), WIDE)  # raises on a CPU without AVX-512F
    torch.manual_seed(0)
    model = build_model(size_config(args.size)).eval()
    model = prepare_for_inference(model, layout="row", batch_size=1)
    counts = sorted({1, args.threads})
    engines = {(isa, t): Engine(model, NativeBackend(model, t, isa), eos_ids=[]) for isa in ISAS for t in counts}
    print(f"{cpu().kind()}; model {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters); "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.repeats} rounds")
    print(f"\n| case | threads | {NARROW} | {WIDE} | {WIDE} vs {NARROW} (above 1: faster): fastest; within a round, "
          "median (range) | same |\n|---|---|---|---|---|---|")
    table = []
    for threads in counts:
        if args.part in ("decoding", "both"):
            table.append(decoding(engines, threads, args))
            print(table[-1], flush=True)
        if args.part in ("passes", "both"):
            for rows, chunks in ((0, 1), (0, 4), (4, 0), (8, 0), (4, 1)):
                table.append(a_pass(engines, threads, rows, chunks, args))
                print(table[-1], flush=True)
    return table


if __name__ == "__main__":
    sys.exit(main() and 0)
