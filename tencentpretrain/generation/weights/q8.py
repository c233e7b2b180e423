"""q8_0 linear layers, llama.cpp's 8-bit format: blocks of 32 weights, each stored as int8 with one float16 scale.

A block ``v`` of 32 values is stored as ``q = round(v / d)`` with ``d = max|v| / 127`` (float32, rounded half away
from zero through the float32 ``1 / d``; ``d = 0`` for a block of zeros) and ``d`` kept in float16: ggml's
``quantize_row_q8_0_ref``. ``quantize_blocks`` is the one implementation of it here: the GGUF export
(``convert/gguf.py``) writes its bytes and ``Q8Linear`` holds them, so the two compare bit for bit. A row whose
length is not a multiple of 32 ends in a block padded with zeros (which adds nothing to any product); GGUF cannot
hold such rows, so the export keeps those tensors in f16.

A ``Q8Linear`` multiplies as llama.cpp's q8_0 x q8_0 dot product does: the input rows are quantised to q8_0 too
(``quantize_blocks`` again, per row), each block's 32 products are summed as integers, and the block sums are scaled
by ``d_w * d_x`` and added in float32. The native kernel (``csrc/kernels.c``: ``q8_product``) computes it with AVX2's
``maddubs``/``madd`` or AVX512-VNNI's ``dpbusd``; ``Q8Linear.forward`` is the PyTorch reference of the same arithmetic
in the same order (eight lanes of four adjacent products per block, a multiply then an add per block, the lanes
summed at the end as the kernel's ``hsum`` does), used where the kernel cannot run and by the tests: it gives the
kernel's bits. It is slow (a loop over the blocks); decoding runs natively (``generation/native/``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BLOCK = 32
CHUNK_VALUES = 1 << 14  # values quantised at a time by quantize_blocks


def blocks_of(n: int) -> int:
    """The q8_0 blocks of a row of ``n`` values (the last padded with zeros)."""
    return -(-n // BLOCK)


def quantize_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q8_0 of the rows of ``x`` (..., n) float32: int8 (..., blocks * 32) and float16 scales (..., blocks).
    Quantised a slice of rows at a time, so its temporaries stay small beside ``x``."""
    x = np.asarray(x, dtype=np.float32)
    n, lead = x.shape[-1], x.shape[:-1]
    flat = x.reshape(-1, n)
    blocks = blocks_of(n)
    qs = np.empty((flat.shape[0], blocks * BLOCK), dtype=np.int8)
    scales = np.empty((flat.shape[0], blocks), dtype=np.float16)
    step = max(1, CHUNK_VALUES // (blocks * BLOCK))
    for start in range(0, flat.shape[0], step):
        qs[start:start + step], scales[start:start + step] = _quantize_rows(flat[start:start + step], blocks)
    return qs.reshape(*lead, blocks * BLOCK), scales.reshape(*lead, blocks)


def _quantize_rows(x: np.ndarray, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    padded = np.zeros((x.shape[0], blocks * BLOCK), dtype=np.float32)
    padded[:, :x.shape[1]] = x
    grouped = padded.reshape(x.shape[0], blocks, BLOCK)
    scale = np.abs(grouped).max(axis=-1, keepdims=True) / np.float32(127)  # (rows, blocks, 1) float32
    with np.errstate(divide="ignore"):
        inverse = np.where(scale == 0, np.float32(0), np.float32(1) / scale).astype(np.float32)
    t = grouped * inverse
    magnitude = np.abs(t)
    whole = np.floor(magnitude)
    q = np.sign(t) * (whole + np.floor(2 * (magnitude - whole)))  # round half away from zero, exactly
    return q.astype(np.int8).reshape(padded.shape), scale[..., 0].astype(np.float16)


def gguf_bytes(qs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """GGUF's q8_0 bytes of rows quantised by ``quantize_blocks``: per block its float16 scale, then its 32 int8,
    (..., blocks * 34) uint8."""
    *lead, blocks = scales.shape
    d = scales.reshape(*lead, blocks, 1).view(np.uint8)  # (..., blocks, 2)
    q = qs.reshape(*lead, blocks, BLOCK).view(np.uint8)  # (..., blocks, 32)
    return np.concatenate([d, q], axis=-1).reshape(*lead, blocks * (BLOCK + 2))


class Q8Weight:
    """A (out, in) weight in q8_0: ``qs`` int8 (out, blocks * 32) and ``scales`` float16 (out, blocks), contiguous
    CPU tensors the native kernel reads where they are."""

    def __init__(self, weight: torch.Tensor):
        qs, scales = quantize_blocks(weight.detach().to("cpu", torch.float32).numpy())
        self.shape = tuple(weight.shape)
        self.qs = torch.from_numpy(qs).contiguous()
        self.scales = torch.from_numpy(scales).contiguous()

    def gguf_bytes(self) -> np.ndarray:
        """The bytes GGUF holds for this weight (``gguf_bytes``); only for ``in`` a multiple of 32."""
        if self.shape[1] % BLOCK:
            raise ValueError(f"GGUF's q8_0 needs rows of a multiple of {BLOCK}; these have {self.shape[1]}")
        return gguf_bytes(self.qs.numpy(), self.scales.numpy())

    def dequantized(self) -> torch.Tensor:
        """q * d as float32 (out, in)."""
        out, in_ = self.shape
        blocks = self.qs.view(out, -1, BLOCK).float() * self.scales.float()[..., None]
        return blocks.view(out, -1)[:, :in_]


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_blocks`` in PyTorch for float32 rows (N, n): the integers as float32 (N, blocks, 32) and the
    float16 scales as float32 (N, blocks), the same values as the native kernel's ``quantize_row_q8``."""
    n = x.shape[-1]
    padded = torch.nn.functional.pad(x.float(), (0, blocks_of(n) * BLOCK - n)).view(x.shape[0], -1, BLOCK)
    scale = padded.abs().amax(dim=-1, keepdim=True) / 127.0  # (N, blocks, 1)
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    t = padded * inverse
    magnitude = t.abs()
    whole = magnitude.floor()
    q = torch.sign(t) * (whole + (2 * (magnitude - whole)).floor())
    return q, scale[..., 0].half().float()


def q8_matmul(x: torch.Tensor, weight: Q8Weight) -> torch.Tensor:
    """The q8_0 product of float32 rows ``x`` (N, in) and ``weight``: (N, out) float32, the native kernel's bits."""
    out, _ = weight.shape
    return block_products(x, weight.qs.view(out, -1, BLOCK).float(), weight.scales.float())


def block_products(x: torch.Tensor, wq: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
    """The blockwise integer product of float32 rows ``x`` (N, in), quantised to q8_0 here, and a weight of integers
    ``wq`` (out, blocks, 32) as float32 with float32 scales ``wd`` (out, blocks): (N, out) float32, summed as the
    native kernel sums every q8_0 and q4_0 product."""
    out = wq.shape[0]
    xq, xd = quantize_rows(x)  # (N, blocks, 32), (N, blocks)
    acc = torch.zeros(x.shape[0], out, 8)  # (N, out, lanes)
    for b in range(wq.shape[1]):
        # lane l: the four adjacent products 4l .. 4l + 3, exact integers in float32 (|sum| <= 4 * 127^2)
        sums = torch.einsum("nlk,olk->nol", xq[:, b].reshape(-1, 8, 4), wq[:, b].reshape(-1, 8, 4))
        scale = wd[None, :, b] * xd[:, b, None]  # (N, out)
        acc = acc + sums * scale[..., None]
    half = acc[..., :4] + acc[..., 4:]  # the kernel's hsum: halves, then pairs, then the last two
    return (half[..., 0] + half[..., 2]) + (half[..., 1] + half[..., 3])


class BlockLinear(nn.Module):
    """A bias-free linear layer with blockwise-quantised weights (``weight_q``), computing in float32 as the native
    kernel does. A format names itself (``kind``), its weight class (``weight_class``) and its product
    (``product``): :class:`Q8Linear` here, ``Q4Linear`` in q4.py.

    Args:
        linear: the float ``nn.Linear`` to quantise (no bias).
    """

    kind: str
    weight_class: type
    product: staticmethod

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError(f"{self.kind} layers take no bias")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_q = self.weight_class(linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) in ``x``'s dtype."""
        flat = x.reshape(-1, self.in_features).to("cpu", torch.float32)
        out = self.product(flat, self.weight_q).to(x.device, x.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind}"


class Q8Linear(BlockLinear):
    """A bias-free linear layer with q8_0 weights."""

    kind, weight_class, product = "q8_0", Q8Weight, staticmethod(q8_matmul)


def quantize_linears(model: nn.Module, layer_of, include_lm_head: bool) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` of ``model`` in place with ``layer_of(name, linear)`` (the LM head
    too with ``include_lm_head``); return the model."""
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear
               and module.bias is None and (include_lm_head or not name.startswith("target."))]
    for name, module in targets:
        model.set_submodule(name, layer_of(name, module), strict=True)
    return model


def quantize_q8_0(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` of ``model`` in place with a ``Q8Linear``; return the model.

    Args:
        model: a float model in eval mode (embeddings and norms stay in floating point).
        include_lm_head: also quantise ``target.lm.output_layer`` (llama.cpp's q8_0 files do).
    """
    return quantize_linears(model, lambda name, linear: Q8Linear(linear), include_lm_head)
