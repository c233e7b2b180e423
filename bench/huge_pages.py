"""Weights on 2 MiB pages against 4 KiB pages, side by side in one run: native decoding steps of one row.

Two copies of a random model of a ``bench/generate.py`` size (default ``100m``) are prepared as the engine prepares
them (``row`` layout), one with ``prepare_for_inference(huge_pages=False)`` (the weights where PyTorch allocated
them: 4 KiB pages) and one with the default (``weights/hugepages.py``: one mapping advised ``MADV_HUGEPAGE``).
For each thread count, decoding steps of one row over a 100-token cache alternate between the two copies; the
fastest of ``--repeats`` is reported, with the bytes of weights a step streams per second.

Run: ``python -m bench.huge_pages`` (``--size tiny`` for a quick look).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bench.generate import size_config
from tencentpretrain.generation import Engine, native, prepare_for_inference
from tencentpretrain.model import build_model


def streamed_bytes(model) -> int:
    """Bytes of weights one decoding step reads: every parameter but the word embedding (one row of it)."""
    embedding = model.embedding.word.embedding.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"), help="model preset (bench/generate.py)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(size_config(args.size)).eval()
    copies = {"4 KiB pages": prepare_for_inference(copy.deepcopy(model), layout="row", huge_pages=False),
              "2 MiB pages": prepare_for_inference(copy.deepcopy(model), layout="row")}
    print(f"model {args.size}: {streamed_bytes(model) / 1e6:.0f} MB of weights a step; "
          f"{copies['2 MiB pages'].weight_pages}")
    rows = ["| threads | " + " | ".join(f"{name} ms a step (GB/s)" for name in copies) + " | 2 MiB vs 4 KiB |",
            "|---|---|---|---|"]
    for threads in args.threads:
        decoders = {name: native.NativeBackend(m, threads) for name, m in copies.items()}
        caches = {name: Engine(m).new_cache(1, 128) for name, m in copies.items()}
        best = dict.fromkeys(copies, float("inf"))
        with torch.inference_mode():
            for _ in range(args.repeats + 1):
                for name, decoder in decoders.items():
                    caches[name].length = 100
                    start = time.perf_counter()
                    decoder.decode([5], [100], [0], caches[name])
                    best[name] = min(best[name], time.perf_counter() - start)
        cells = " | ".join(f"{t * 1e3:.2f} ({streamed_bytes(model) / t / 1e9:.1f})" for t in best.values())
        rows.append(f"| {threads} | {cells} | {best['4 KiB pages'] / best['2 MiB pages']:.2f}x |")
        print(rows[-1] if len(rows) > 3 else "\n".join(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
