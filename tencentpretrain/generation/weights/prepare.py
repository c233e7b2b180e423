"""Turning a loaded model into the one the generation ``Engine`` runs: eval mode, quantised weights (``--quant``),
CPU weight layout, CPU weights on huge pages.

Every caller that builds an ``Engine`` (the CLI and server through ``options.load_engine``, the benchmarks, the
tests) prepares the model here first; the engine itself runs the model as it is given.
"""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.errors import InputError
from tencentpretrain.generation.weights.hugepages import to_huge_pages
from tencentpretrain.generation.weights.int8 import quantize_int8
from tencentpretrain.generation.weights.layout import apply_layout
from tencentpretrain.generation.weights.q4 import quantize_q4_0
from tencentpretrain.generation.weights.q8 import quantize_q8_0

# --quant: none; int8 (PyTorch, per output channel, weights/int8.py); q8_0 and q4_0 (llama.cpp's blocks of 32,
# decoded by the native kernel, weights/q8.py and q4.py)
QUANTS = ("none", "int8", "q8_0", "q4_0")
BLOCK_QUANTS = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}


def prepare_for_inference(model: nn.Module, int8: bool = False, layout: str = "column", batch_size: int = 8,
                          include_lm_head: bool = True, huge_pages: bool = True, quant: str = "none") -> nn.Module:
    """Put ``model`` in eval mode, quantise it, lay out its weights and put them on huge pages, in place; return it
    (``model.weight_pages`` says where its weights are).

    Args:
        model: a ``Model`` (any dtype/device).
        int8: the same as ``quant="int8"``.
        layout: CPU weight layout (``layout.py``): ``column`` (the default, fastest for one prompt at a
            time in PyTorch), ``row`` (fastest for native decoding), ``packed`` or ``both`` (oneDNN, faster for
            batches in PyTorch; float32 only). Off the CPU the weights are left as they are and only ``column`` and
            ``row`` are accepted.
        batch_size: the number of prompts decoded together, which ``packed``/``both`` are tuned for.
        include_lm_head: with a quantisation, also quantise the LM head.
        huge_pages: on the CPU, move the weights onto 2 MiB pages (``generation/weights/hugepages.py``: decoding streams
            them faster; q8_0 weights are not parameters and stay where they are).
        quant: one of ``QUANTS``: ``int8`` replaces the bias-free and biased linear layers by weight-only int8 ones
            (``int8.py``, PyTorch), ``q8_0`` the bias-free ones by q8_0 layers (``q8.py``,
            float32 CPU models; the native decoder runs them), ``q4_0`` by q4_0 layers, the LM head by a q8_0 one
            (``q4.py``, as llama.cpp's q4_0 files).

    Raises:
        InputError: ``packed`` or ``both`` for a model that is not on the CPU, or one the weights or this
            PyTorch build cannot take.
    """
    model.eval()
    quant = "int8" if int8 else quant
    if quant not in QUANTS:
        raise InputError(f"unknown quantisation {quant!r}; known: {', '.join(QUANTS)}")
    device = next(model.parameters()).device
    if quant == "int8":
        quantize_int8(model, include_lm_head=include_lm_head)
    elif quant in BLOCK_QUANTS:
        if device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
            raise InputError(f"--quant {quant} is for float32 models on CPU; this one is "
                             f"{next(model.parameters()).dtype} on {device}")
        BLOCK_QUANTS[quant](model, include_lm_head=include_lm_head)
    model.weight_pages = "weights where they were loaded"
    if device.type == "cpu":
        apply_layout(model, layout, batch_size)
        if huge_pages:
            model.weight_pages = to_huge_pages(model)
    elif layout not in ("column", "row"):
        raise InputError(f"weight layout {layout!r} is for CPU; the model is on {device}")
    return model
