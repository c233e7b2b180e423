"""What llama.cpp's weight repacking is worth: the same q8_0 and q4_0 files with ``--llama_cpp_repack on`` and
``off`` side by side in one process (docs/deployment.md quotes the figures).

llama.cpp repacks q4_0 (and, in recent versions, q8_0) weights into interleaved layouts for its AVX2/AVX-512
products, and on AMX CPUs into AMX tiles, whose path crashes there (``tencentpretrain/llamacpp.py``). This measures
what turning repacking off costs, on a random model of a ``bench/generate.py`` size (default ``100m``) exported
with our GGUF writer:

- **prompt**: evaluating a ``--prompt``-token prompt from an empty context (tokens/s), where the products have many
  rows and the layouts matter most;
- **decoding**: batch-1 greedy decoding, decode tok/s = ``(N - 1) / (t(N) - t(1))`` as in ``bench/threads.py``.

Each round runs every variant in turn, ``--repeats`` rounds; each row gives both settings' fastest figure and the
median (and range) of the off/on ratio within a round (below 1: off is slower). On an AMX CPU "on" crashes, so only
"off" runs unless ``--force_on``. The CPU is printed first.

Run: ``python -m bench.llama_cpp_repack`` (100m, 2 threads), ``--size tiny`` for a quick look.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch

from bench.generate import decode_rate, prompts_for, size_config
from bench.generate_llama_cpp import F32, export
from bench.isa import paired
from tencentpretrain.hardware import cpu
from tencentpretrain.llamacpp import open_llama
from tencentpretrain.model import build_model

OUTTYPES = ("q8_0", "q4_0")


class Variant:
    """One file loaded with one repack setting: times a prompt evaluation and ``n`` greedy tokens."""

    def __init__(self, path: Path, repack: str, threads: int, context: int):
        self.model = open_llama(path, repack, n_ctx=context, n_threads=threads, n_threads_batch=threads,
                                n_batch=context, type_k=F32, type_v=F32, verbose=False)

    def prompt_seconds(self, prompt: list[int]) -> float:
        self.model.reset()
        start = time.perf_counter()
        self.model.eval(prompt)
        return time.perf_counter() - start

    def generate(self, prompt: list[int], n: int) -> list[int]:
        out = []
        for token in self.model.generate(prompt, temp=0.0, reset=True):
            out.append(token)
            if len(out) == n:
                break
        return out

    def decode_seconds(self, prompt: list[int], n: int) -> float:
        start = time.perf_counter()
        self.generate(prompt, n)
        return time.perf_counter() - start


def bench_file(outtype: str, path: Path, settings: tuple[str, ...], args) -> list[str]:
    """Rows for one file: prompt tokens/s and decode tokens/s under each repack setting."""
    prompt = prompts_for(1, 32000, seed=1)[0][:1]
    long_prompt = (prompts_for(8, 32000, seed=2)[0] * 64)[: args.prompt]
    context = max(args.prompt, len(prompt) + args.new_tokens) + 8
    variants = {setting: Variant(path, setting, args.threads, context) for setting in settings}
    tokens = {setting: v.generate(prompt, args.new_tokens) for setting, v in variants.items()}
    prompt_speed = {setting: [] for setting in settings}
    decode_speed = {setting: [] for setting in settings}
    for variant in variants.values():  # warm-up
        variant.prompt_seconds(long_prompt)
    for _ in range(args.repeats):
        for setting, variant in variants.items():
            prompt_speed[setting].append(len(long_prompt) / variant.prompt_seconds(long_prompt))
            first, full = variant.decode_seconds(prompt, 1), variant.decode_seconds(prompt, args.new_tokens)
            decode_speed[setting].append(decode_rate(first, full, 1, args.new_tokens))
    rows = []
    for case, speeds in ((f"prompt of {len(long_prompt)} (tok/s)", prompt_speed),
                         (f"decoding, {args.new_tokens} tokens (tok/s)", decode_speed)):
        best = {setting: max(values) for setting, values in speeds.items()}
        if len(settings) == 2:
            ratio = f"{best['off'] / best['on']:.2f}x; {paired(speeds['on'], speeds['off'])}"
            same = str(tokens["on"] == tokens["off"])
            rows.append(f"| {outtype} | {case} | {args.threads} | {best['on']:.1f} | {best['off']:.1f} | {ratio} | "
                        f"{same} |")
        else:
            rows.append(f"| {outtype} | {case} | {args.threads} | (crashes on AMX) | {best['off']:.1f} | - | - |")
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"), help="model preset (bench/generate.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=256, help="tokens of the evaluated prompt")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (each setting once per round)")
    parser.add_argument("--force_on", action="store_true", help="also run repack on where the CPU has AMX (crashes)")
    args = parser.parse_args(argv)
    settings = ("on", "off") if args.force_on or not cpu().amx else ("off",)
    torch.manual_seed(0)
    model = build_model(size_config(args.size)).eval()
    print(f"{cpu().kind()}; model {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters); "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {args.repeats} rounds")
    print("\n| file | case | threads | repack on | repack off | off / on (below 1: off is slower): fastest; within a "
          "round, median (range) | same tokens |\n|---|---|---|---|---|---|---|")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for outtype, path in export(model, Path(tmp), OUTTYPES).items():
            for row in bench_file(outtype, path, settings, args):
                print(row, flush=True)
                table.append(row)
    return table


if __name__ == "__main__":
    main()
