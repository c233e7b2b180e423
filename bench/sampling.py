"""Sampling, side by side in one run: our sampler (``generation/sampling.py``: ``torch.topk`` candidates, one uniform
draw per row) against the one it replaced (kept below as ``sample_sorted``: the whole vocabulary sorted for top-p,
``torch.multinomial`` over the vocabulary, as transformers' warpers and TencentPretrain's scripts do).

1. The cost of one call on (B, vocab) logits for several settings, and whether both keep the same tokens.
2. Batch-1 decoding with run_llama.py's default sampling (temperature 0.7, top-k 40, top-p 0.9) on the 99M model
   (``--size``), natively on ``--threads`` threads: our engine with each sampler, and llama.cpp's f32 with the same
   settings (min-p off) when llama-cpp-python is installed. Decode tok/s = ``(N - 1) / (t(N) - t(1))``, the fastest
   of ``--repeats`` alternating runs (``bench/generate.py``'s ``measure``). The tokens differ between the three
   (each draws its own random numbers).

Run: ``python -m bench.sampling`` (``--no_llama_cpp``, ``--threads 1``).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from bench.generate import measure, prompts_for, size_config
from tencentpretrain.generation import Engine, SamplingParams, prepare_for_inference
from tencentpretrain.generation import engine as engine_module
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.native import NativeBackend
from tencentpretrain.generation.sampling import candidates, greedy, sample
from tencentpretrain.llamacpp import add_repack_arg
from tencentpretrain.model import build_model

SETTINGS = {
    "run_llama.py default (T 0.7, top-k 40, top-p 0.9)": SamplingParams(0.7, 40, 0.9),
    "the same + repetition penalty 1.1": SamplingParams(0.7, 40, 0.9, 1.1),
    "top-p 0.9 alone": SamplingParams(0.7, 0, 0.9),
    "temperature 1 alone": SamplingParams(1.0, 0, 1.0),
}


def sample_sorted(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The sampler before: masks over the whole vocabulary, a full sort for top-p, torch.multinomial."""
    if params.penalized:
        penalized = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if params.greedy:
        return greedy(logits)
    logits = sorted_filters(logits.float() / params.temperature, params.top_k, params.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def sorted_filters(logits: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """Top-k then top-p as -inf masks over the vocabulary (the sampler before)."""
    if 0 < k < logits.shape[-1]:
        logits = logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[:, -1:], float("-inf"))
    if p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        remove = (probs.cumsum(dim=-1) - probs) >= p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def per_call(vocab: int, rows: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    logits = torch.randn(rows, vocab) * 3
    seen = torch.zeros(rows, vocab, dtype=torch.bool)
    seen[:, torch.randint(0, vocab, (300,))] = True  # a prompt and its output so far
    lines = []
    for label, params in SETTINGS.items():
        times = {}
        for name, fn in (("before", sample_sorted), ("now", sample)):
            generator = torch.Generator().manual_seed(0)
            for _ in range(5):
                fn(logits, params, seen, generator)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(10):
                    fn(logits, params, seen, generator)
                best = min(best, (time.perf_counter() - start) / 10)
            times[name] = best * 1e3
        scaled = logits / params.temperature
        ids, values = candidates(scaled, params.top_k, params.top_p)
        ours = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, ids, ~torch.isinf(values))
        same = torch.equal(ours, ~torch.isinf(sorted_filters(scaled, params.top_k, params.top_p)))
        lines.append(f"| {label} | {rows} | {times['before']:.3f} | {times['now']:.3f} | "
                     f"{times['before'] / times['now']:.1f}x | {same} |")
    return lines


def decoding(args, temporary: Path) -> list[str]:
    torch.manual_seed(0)
    model = build_model(size_config(args.size)).eval()
    prompt = prompts_for(1, model.vocab_size)[0]
    model = prepare_for_inference(model, layout="row", batch_size=1)
    engine = Engine(model, choose_backend(model, args.threads))
    if not isinstance(engine.backend, NativeBackend):
        raise SystemExit(f"native decoding is unavailable here: {engine.backend.description}")
    params = SETTINGS["run_llama.py default (T 0.7, top-k 40, top-p 0.9)"]

    def ours(sampler):
        def run(n: int) -> None:
            with mock.patch.object(engine_module, "sample", sampler):
                engine.generate([prompt], n, params, seed=0)
        return run

    variants = {"ours, sampler before": ours(sample_sorted), "ours, sampler now": ours(sample)}
    if args.llama_cpp:
        from bench.generate_llama_cpp import export, llama_cpp_runner

        path = export(model, temporary)["f32"]
        llama = llama_cpp_runner(path, prompt, args.threads, len(prompt) + args.new_tokens + 8,
                                 args.llama_cpp_repack, temp=0.7, top_k=40, top_p=0.9, min_p=0.0)
        variants["llama.cpp f32"] = llama
    speed = {label: tps for label, (_, tps) in measure(variants, 1, args.new_tokens, args.repeats).items()}
    now = speed["ours, sampler now"]
    return [f"| {label} | {args.threads} | {value:.1f} | {value / now:.2f} |" for label, value in speed.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_llama_cpp", dest="llama_cpp", action="store_false")
    add_repack_arg(parser)
    args = parser.parse_args(argv)
    args.llama_cpp = args.llama_cpp and importlib.util.find_spec("llama_cpp") is not None
    torch.set_num_threads(args.threads)
    print("| setting | rows | before ms | now ms | speed-up | same kept tokens |\n|---|---|---|---|---|---|")
    for rows in (1, 8):
        for line in per_call(args.vocab, rows, args.repeats):
            print(line, flush=True)
    print(f"\n| batch-1 sampled decoding, {args.size} model | threads | tok/s | x ours now |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for line in decoding(args, Path(tmp)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
