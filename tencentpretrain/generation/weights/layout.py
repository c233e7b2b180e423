"""How the engine lays out linear weights in memory on CPU, for speed (same values, same results to rounding).

MKL and oneDNN reach very different speeds on the small matrix products of decoding, depending on how the
weight is stored and on how many rows the input has (figures: docs/benchmarks.md, "Generation"):

- ``row``: every weight row-major, as ``nn.Linear`` stores it. What native decoding (``generation/native/``)
  streams fastest on several threads (each thread reads whole rows); prompts in PyTorch run about as fast as with
  ``column``. The ``auto`` choice wherever the engine decodes natively.
- ``column``: each (out, in) weight with at least as many outputs as inputs stored transposed, in place (same
  parameter, shape and values); wider ones (the FFN down projection, GQA's key/value projections) stay row-major.
  Fastest for one row at a time, i.e. decoding at batch 1: the LM head runs up to 5x faster column-major, the
  down projection 1.25x faster row-major (weights streamed from memory, docs/benchmarks.md); no extra memory.
- ``packed``: the weights of the large layers (``PACK_MIN_WEIGHTS`` or more) reordered once into oneDNN's blocked
  format and multiplied by oneDNN; the small ones column-major. For a few rows (decoding a batch of 8) oneDNN is
  1.1-1.5x faster than MKL on a large weight, as fast on a long prompt, but slower for one row; each oneDNN call
  also costs ~30 us more, which is why small layers stay with MKL. The dense weight of a packed layer is dropped
  (no extra memory, except for a head tied to the word embedding, which keeps it).
- ``both``: as ``packed``, but packed layers keep their column-major weight for one-row products: the fastest at
  every batch size, at the cost of a second copy of the large weights.

``packed`` and ``both`` turn the model into an inference-only one (no gradients, no ``deepcopy``; the state dict
of a packed-only layer has no weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.errors import InputError

LAYOUTS = ("row", "column", "packed", "both")
PACK_MIN_WEIGHTS = 1 << 19  # where oneDNN overtakes MKL at 2-8 rows on a 1-thread AMD EPYC (docs/benchmarks.md)


def packing_available() -> bool:
    """Whether this PyTorch build can pack linear weights for oneDNN."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """A float32 CPU linear layer whose weight is held in oneDNN's blocked format.

    Args:
        linear: the layer to pack (its bias is kept as is).
        rows: the number of input rows the packed format is tuned for (the decoding batch size).
        keep_dense: keep the dense weight, stored column-major, for one-row inputs (the ``both`` layout).
    """

    def __init__(self, linear: nn.Linear, rows: int, keep_dense: bool):
        super().__init__()
        weight = linear.weight.detach()
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError(f"packed weights are for float32 on CPU, got {weight.dtype} on {weight.device}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, max(rows, 1))  # opaque oneDNN tensor
        self.bias = linear.bias
        self.register_parameter("weight", linear.weight if keep_dense else None)
        column_major(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        if self.weight is not None and x.numel() == self.in_features:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dense_copy={self.weight is not None}")


def column_major(linear: nn.Module) -> None:
    """Store a linear layer's (out, in) weight transposed in memory (same values, shape and parameter) when
    out >= in; a wider weight is left row-major, which MKL multiplies faster by one row."""
    weight = getattr(linear, "weight", None)
    if (isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.is_contiguous()
            and weight.shape[0] >= weight.shape[1]):
        weight.data = weight.data.t().contiguous().t()


def row_major(linear: nn.Module) -> None:
    """Store a linear layer's (out, in) weight row-major (contiguous), as ``nn.Linear`` creates it."""
    weight = getattr(linear, "weight", None)
    if isinstance(weight, nn.Parameter) and not weight.is_contiguous():
        weight.data = weight.data.contiguous()


def apply_layout(model: nn.Module, layout: str, rows: int = 8) -> None:
    """Lay out every ``nn.Linear`` of a CPU ``model`` in place (see the module docstring).

    Args:
        model: an eval-mode float32 model on CPU.
        layout: ``row``, ``column``, ``packed`` or ``both``.
        rows: the batch size ``packed``/``both`` are tuned for.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown weight layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout in ("packed", "both") and not packing_available():
        raise InputError(f"weight layout {layout!r} needs PyTorch with oneDNN (mkldnn), which this build lacks; "
                         "use 'column'")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if layout in ("packed", "both"):
        for name, module in targets:
            if module.weight.device.type != "cpu" or module.weight.dtype != torch.float32:
                raise InputError(f"weight layout {layout!r} is for float32 weights on CPU; {name}.weight is "
                                 f"{module.weight.dtype} on {module.weight.device}")
    for name, module in targets:
        if layout == "row":
            row_major(module)
            continue
        if layout == "column" or type(module) is not nn.Linear or module.weight.numel() < PACK_MIN_WEIGHTS:
            column_major(module)
            continue
        model.set_submodule(name, PackedLinear(module, rows, keep_dense=layout == "both"), strict=True)


def weight_layout(choice: str, batch_size: int, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, native: bool = False) -> str:
    """The layout for a ``--weight_layout`` choice: ``auto`` is ``row`` where the native decoder will decode
    (``native``: it streams dense row-major weights best, batches included), else ``packed`` for batches of several
    prompts with float32 weights on CPU (when this PyTorch has oneDNN), else ``column``; other choices are returned
    as given."""
    if choice != "auto":
        return choice
    if native:
        return "row"
    packable = torch.device(device).type == "cpu" and dtype == torch.float32 and packing_available()
    return "packed" if batch_size > 1 and packable else "column"
