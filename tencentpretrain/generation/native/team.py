"""The native library's team of threads: ``threads - 1`` workers that, with the caller, run each product."""

from __future__ import annotations

import ctypes

import torch

from tencentpretrain.generation.native.abi import matrix_of, quantized_matrix_of
from tencentpretrain.generation.native.build import load_library
from tencentpretrain.generation.weights.q4 import Q4Weight
from tencentpretrain.generation.weights.q8 import Q8Weight

SPIN_NS = 2_000_000  # an idle worker spins this long (between tokens and requests) before it sleeps


class Team:
    """``threads - 1`` native worker threads that, with the caller, run each product; freed with the object.

    Args:
        threads: threads in all (the caller counts as one).
        isa: the build of the native library to run (None: ``load_library``'s choice).
    """

    def __init__(self, threads: int, isa: str | None = None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.lib = load_library(isa)
        self.handle = self.lib.team_new(threads, SPIN_NS)
        if not self.handle:
            raise MemoryError("could not allocate the native thread team")
        self.threads = self.lib.team_threads(self.handle)

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.team_free(self.handle)
            self.handle = None

    def product(self, weight, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T`` for a float32 (out, in) weight, row- or column-major, and float32 rows ``x`` (rows, in);
        or, for a ``Q8Weight`` or ``Q4Weight``, the q8_0 or q4_0 product (``x`` quantised to q8_0, integer block
        sums times scales)."""
        quantized = isinstance(weight, (Q8Weight, Q4Weight))
        matrix, _ = quantized_matrix_of(weight) if quantized else matrix_of(weight, "weight")
        x = x.detach().float().contiguous()
        out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
        self.lib.team_product(self.handle, ctypes.byref(matrix), x.data_ptr(), x.shape[0], out.data_ptr())
        return out
