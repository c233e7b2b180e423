"""The native library's interface: the C structs of ``csrc/forward.c`` as ``ctypes`` structures, the prototypes of
its entry points, and the C descriptions of a model's tensors (nothing is copied: the structs point into them)."""

from __future__ import annotations

import ctypes

import torch

from tencentpretrain.generation.weights.q4 import Q4Weight
from tencentpretrain.generation.weights.q8 import Q8Weight

P, L = ctypes.c_void_p, ctypes.c_long


class Unsupported(Exception):
    """Why the native backend cannot run a model (or cannot run here)."""


class Matrix(ctypes.Structure):
    """``matrix`` (kernels.h): a float32 (out, in) weight, row- or column-major, or a q8_0 / q4_0 one."""

    _fields_ = [("w", P), ("out", L), ("in_", L), ("transposed", L), ("q", P), ("d", P), ("q4", L)]


class Layer(ctypes.Structure):
    """``layer_t`` (forward.c): one transformer layer's norms and products."""

    _fields_ = [("attention_norm", P), ("feed_forward_norm", P)] + [
        (name, Matrix) for name in ("q", "k", "v", "o", "gate", "up", "down")]


class ModelStruct(ctypes.Structure):
    """``model_t`` (forward.c): the sizes, the embedding, the final norm, the LM head and the layers."""

    _fields_ = [(name, L) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "feedforward", "vocab")
                ] + [("eps", ctypes.c_float), ("embedding", P), ("final_norm", P), ("head", Matrix),
                     ("layer", ctypes.POINTER(Layer))]


class Row(ctypes.Structure):
    """``row_t`` (forward.c): where one token keeps its keys and values and what it attends to. Its cache holds the
    keys of layer l, key/value head h, column t at ``keys + l * layer + h * head + t * column`` floats (values
    alike); the token writes column ``write`` and attends to columns ``first`` .. ``write``."""

    _fields_ = [("keys", P), ("values", P), ("layer", L), ("head", L), ("column", L), ("write", L), ("first", L)]


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the argument and result types of the library's entry points; returns ``lib``."""
    lib.team_new.restype, lib.team_new.argtypes = P, [ctypes.c_int, L]
    lib.team_free.restype, lib.team_free.argtypes = None, [P]
    lib.team_threads.restype, lib.team_threads.argtypes = ctypes.c_int, [P]
    lib.team_product.restype, lib.team_product.argtypes = None, [P, ctypes.POINTER(Matrix), P, L, P]
    lib.scratch_size.restype, lib.scratch_size.argtypes = L, [ctypes.POINTER(ModelStruct), L, L, ctypes.c_int]
    lib.forward_rows.restype = None
    lib.forward_rows.argtypes = [P, ctypes.POINTER(ModelStruct), L, P, P, P, P, ctypes.POINTER(Row), L, P, L, P, P,
                                 P]
    lib.vector_bits.restype, lib.vector_bits.argtypes = ctypes.c_int, []
    lib.q8_vnni.restype, lib.q8_vnni.argtypes = ctypes.c_int, []
    lib.quantize_row_q8.restype, lib.quantize_row_q8.argtypes = None, [P, L, P, P]
    return lib


def quantized_matrix_of(weight: Q8Weight | Q4Weight) -> tuple[Matrix, Q8Weight | Q4Weight]:
    """The C description of a q8_0 or q4_0 weight, and the object to keep."""
    out, in_ = weight.shape
    q4 = int(isinstance(weight, Q4Weight))
    return Matrix(0, out, in_, 0, weight.qs.data_ptr(), weight.scales.data_ptr(), q4), weight


def matrix_of(weight: torch.Tensor | None, name: str) -> tuple[Matrix, torch.Tensor]:
    """The C description of a float32 CPU (out, in) weight stored row- or column-major, and the tensor to keep."""
    if weight is None:
        raise Unsupported(f"{name} has no dense weight (a layer packed for oneDNN only)")
    weight = weight.detach()
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        raise Unsupported(f"{name} is {weight.dtype} on {weight.device}; the native decoder takes float32 on CPU")
    out, in_ = weight.shape
    if weight.is_contiguous():
        return Matrix(weight.data_ptr(), out, in_, 0), weight
    if weight.t().is_contiguous():
        return Matrix(weight.data_ptr(), out, in_, 1), weight
    raise Unsupported(f"{name} is neither row- nor column-major")


def vector_of(weight: torch.Tensor, name: str, size: int) -> tuple[int, torch.Tensor]:
    weight = weight.detach()
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.shape != (size,) or \
            not weight.is_contiguous():
        raise Unsupported(f"{name} must be a contiguous float32 CPU vector of {size}")
    return weight.data_ptr(), weight
