"""One-row product of the LM head (32000 x 768, fp32): ``F.linear`` against one ``torch.bmm`` over weight halves.

PyTorch runs ``F.linear`` of one row on one thread whatever ``torch.set_num_threads`` says. Stored as P column-major
slices ``(P, K, N / P)``, the same product is one ``torch.bmm`` whose batch of P slices PyTorch spreads over its
threads, in one native call (no Python hand-offs). This measures the idea before it goes into the engine.

    python bench/one_row_split.py [--rows 32000 --cols 768 --parts 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_ms(run, calls: int = 50, rounds: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32000, help="output features (N)")
    parser.add_argument("--cols", type=int, default=768, help="input features (K)")
    parser.add_argument("--parts", type=int, default=2, help="column slices (P)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, k, p = args.rows, args.cols, args.parts
    weight = torch.randn(n, k)
    column_major = weight.t().contiguous().t()  # the engine's `column` layout
    slices = weight.t().contiguous().view(k, p, n // p).permute(1, 0, 2).contiguous()  # (P, K, N / P)
    x = torch.randn(1, k)
    split = torch.bmm(x.expand(p, 1, k), slices).permute(1, 0, 2).reshape(1, n)
    assert torch.allclose(split, F.linear(x, weight), atol=1e-4)
    print("| threads | F.linear row-major ms | F.linear column-major ms | bmm over slices ms | column / bmm |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row = best_ms(lambda: F.linear(x, weight))
        col = best_ms(lambda: F.linear(x, column_major))
        bmm = best_ms(lambda: torch.bmm(x.expand(p, 1, k), slices))
        print(f"| {threads} | {row:.2f} | {col:.2f} | {bmm:.2f} | **{col / bmm:.2f}x** |")


if __name__ == "__main__":
    main()
