"""Turning a loaded model into the one the generation ``Engine`` runs: eval mode, int8 weights, CPU weight layout.

Every caller that builds an ``Engine`` (the CLI and server through ``options.load_engine``, the benchmarks, the
tests) prepares the model here first; the engine itself runs the model as it is given.
"""

from __future__ import annotations

from torch import nn

from tencentpretrain.cli import InputError
from tencentpretrain.generation.layout import apply_layout
from tencentpretrain.generation.quant import quantize_int8


def prepare_for_inference(model: nn.Module, int8: bool = False, layout: str = "column", batch_size: int = 8,
                          include_lm_head: bool = True) -> nn.Module:
    """Put ``model`` in eval mode, quantise it and lay out its weights, in place; return it.

    Args:
        model: a ``Model`` (any dtype/device).
        int8: replace the linear layers by weight-only int8 ones (``generation/quant.py``).
        layout: CPU weight layout (``generation/layout.py``): ``column`` (the default, fastest for one prompt at a
            time in PyTorch), ``row`` (fastest for native decoding), ``packed`` or ``both`` (oneDNN, faster for
            batches in PyTorch; float32 only). Off the CPU the weights are left as they are and only ``column`` and
            ``row`` are accepted.
        batch_size: the number of prompts decoded together, which ``packed``/``both`` are tuned for.
        include_lm_head: with ``int8``, also quantise the LM head.

    Raises:
        InputError: ``packed`` or ``both`` for a model that is not on the CPU, or one the weights or this
            PyTorch build cannot take.
    """
    model.eval()
    if int8:
        quantize_int8(model, include_lm_head=include_lm_head)
    device = next(model.parameters()).device
    if device.type == "cpu":
        apply_layout(model, layout, batch_size)
    elif layout not in ("column", "row"):
        raise InputError(f"weight layout {layout!r} is for CPU; the model is on {device}")
    return model
