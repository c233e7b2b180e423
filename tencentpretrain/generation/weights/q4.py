"""q4_0 linear layers, llama.cpp's 4-bit format: blocks of 32 weights, each stored in 4 bits with one float16 scale.

A block ``v`` of 32 values is stored with ``d = m / -8``, ``m`` the value of largest magnitude (the first of equal
ones, its sign kept), as ``q = min(15, trunc(v * (1 / d) + 8.5))``, 0 .. 15 standing for ``q - 8`` (the float32
``1 / d``, ``d = 0`` for a block of zeros), ``d`` kept in float16; two values a byte, the low nibbles of a block's
16 bytes its values 0 .. 15 and the high nibbles 16 .. 31: ggml's ``quantize_row_q4_0_ref``. ``quantize_blocks``
is the one implementation of it here: the GGUF q4_0 export (``convert/gguf.py``) writes its bytes and ``Q4Linear``
holds them, so the two compare bit for bit. A row whose length is not a multiple of 32 ends in a block padded with
zeros (``q = 8``: 0, which adds nothing to any product).

A ``Q4Linear`` multiplies as llama.cpp's q4_0 x q8_0 dot product does: the input rows are quantised to q8_0
(``q8.quantize_blocks``), each block's 32 products of ``q - 8`` and the input's integers are summed as integers,
and the block sums scaled by ``d_w * d_x`` and added in float32, in the order of every q8_0 product
(``q8.block_products``, the PyTorch reference, slow: a loop over the blocks). The native kernel (``csrc/kernels.c``:
``q4_product``) computes it with AVX2's ``maddubs``/``madd`` or AVX512-VNNI's ``dpbusd`` on the unsigned nibbles,
less 8 times the input's sums, the same integers, so the same bits.

``quantize_q4_0`` keeps the LM head in q8_0, as llama.cpp's q4_0 files do (``convert/gguf.py``'s ``tensor_type``),
so a model and our GGUF q4_0 export of it hold the same linear weights. The word embedding stays in float32 (the
file holds it in q4_0): rounded to q4_0 values, a row's q8_0 quantisation after the norm falls on ties (q = 4 scales
to 63.5), where one ulp of the norm, which the native kernel and PyTorch sum in different orders, flips many values
at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tencentpretrain.generation.weights.q8 import (
    BLOCK,
    CHUNK_VALUES,
    BlockLinear,
    Q8Linear,
    block_products,
    blocks_of,
    quantize_linears,
)

HALF = BLOCK // 2  # bytes of a block's values


def quantize_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_0 of the rows of ``x`` (..., n) float32: the packed nibbles uint8 (..., blocks * 16) and float16 scales
    (..., blocks). Quantised a slice of rows at a time, so its temporaries stay small beside ``x``."""
    x = np.asarray(x, dtype=np.float32)
    n, lead = x.shape[-1], x.shape[:-1]
    flat = x.reshape(-1, n)
    blocks = blocks_of(n)
    qs = np.empty((flat.shape[0], blocks * HALF), dtype=np.uint8)
    scales = np.empty((flat.shape[0], blocks), dtype=np.float16)
    step = max(1, CHUNK_VALUES // (blocks * BLOCK))
    for start in range(0, flat.shape[0], step):
        qs[start:start + step], scales[start:start + step] = _quantize_rows(flat[start:start + step], blocks)
    return qs.reshape(*lead, blocks * HALF), scales.reshape(*lead, blocks)


def _quantize_rows(x: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    padded = np.zeros((x.shape[0], blocks * BLOCK), dtype=np.float32)
    padded[:, :x.shape[1]] = x
    grouped = padded.reshape(x.shape[0], blocks, BLOCK)
    top = np.take_along_axis(grouped, np.abs(grouped).argmax(axis=-1)[..., None], axis=-1)  # (rows, blocks, 1)
    scale = top / np.float32(-8)
    with np.errstate(divide="ignore"):
        inverse = np.where(scale == 0, np.float32(0), np.float32(1) / scale).astype(np.float32)
    shifted = (grouped * inverse + np.float32(8.5)).astype(np.float32)
    q = np.minimum(np.trunc(shifted), 15).astype(np.uint8)  # (rows, blocks, 32), 0 .. 15
    packed = q[..., :HALF] | (q[..., HALF:] << np.uint8(4))  # (rows, blocks, 16)
    return packed.reshape(x.shape[0], blocks * HALF), scale[..., 0].astype(np.float16)


def unpack(qs: np.ndarray) -> np.ndarray:
    """The values ``q - 8`` (-8 .. 7, int8) of packed q4_0 nibbles (..., blocks * 16): (..., blocks * 32)."""
    grouped = qs.reshape(*qs.shape[:-1], -1, HALF)
    values = np.concatenate([grouped & 0x0F, grouped >> 4], axis=-1).astype(np.int8) - np.int8(8)
    return values.reshape(*qs.shape[:-1], -1)


def gguf_bytes(qs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """GGUF's q4_0 bytes of rows quantised by ``quantize_blocks``: per block its float16 scale, then its 16 bytes of
    nibbles, (..., blocks * 18) uint8."""
    *lead, blocks = scales.shape
    d = scales.reshape(*lead, blocks, 1).view(np.uint8)  # (..., blocks, 2)
    q = qs.reshape(*lead, blocks, HALF)  # (..., blocks, 16)
    return np.concatenate([d, q], axis=-1).reshape(*lead, blocks * (HALF + 2))


class Q4Weight:
    """A (out, in) weight in q4_0: ``qs`` uint8 (out, blocks * 16) and ``scales`` float16 (out, blocks), contiguous
    CPU tensors the native kernel reads where they are."""

    def __init__(self, weight: torch.Tensor):
        qs, scales = quantize_blocks(weight.detach().to("cpu", torch.float32).numpy())
        self.shape = tuple(weight.shape)
        self.qs = torch.from_numpy(qs).contiguous()
        self.scales = torch.from_numpy(scales).contiguous()

    def gguf_bytes(self) -> np.ndarray:
        """The bytes GGUF holds for this weight (``gguf_bytes``); only for ``in`` a multiple of 32."""
        if self.shape[1] % BLOCK:
            raise ValueError(f"GGUF's q4_0 needs rows of a multiple of {BLOCK}; these have {self.shape[1]}")
        return gguf_bytes(self.qs.numpy(), self.scales.numpy())

    def values(self) -> torch.Tensor:
        """The integers ``q - 8`` as float32 (out, blocks, 32)."""
        grouped = self.qs.view(self.shape[0], -1, HALF)  # (out, blocks, 16)
        return torch.cat([grouped & 0x0F, grouped >> 4], dim=-1).float() - 8

    def dequantized(self) -> torch.Tensor:
        """(q - 8) * d as float32 (out, in)."""
        out, in_ = self.shape
        return (self.values() * self.scales.float()[..., None]).view(out, -1)[:, :in_]


def q4_matmul(x: torch.Tensor, weight: Q4Weight) -> torch.Tensor:
    """The q4_0 x q8_0 product of float32 rows ``x`` (N, in) and ``weight``: (N, out) float32, the native kernel's
    bits."""
    return block_products(x, weight.values(), weight.scales.float())


class Q4Linear(BlockLinear):
    """A bias-free linear layer with q4_0 weights."""

    kind, weight_class, product = "q4_0", Q4Weight, staticmethod(q4_matmul)


def quantize_q4_0(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` of ``model`` in place with a ``Q4Linear``, and the LM head with a
    ``Q8Linear`` (llama.cpp's q4_0 files keep it in q8_0); return the model.

    Args:
        model: a float model in eval mode (embeddings and norms stay in floating point).
        include_lm_head: also quantise ``target.lm.output_layer`` (to q8_0).
    """
    return quantize_linears(model, lambda name, linear: (Q8Linear if name.startswith("target.") else Q4Linear)(linear),
                            include_lm_head)
