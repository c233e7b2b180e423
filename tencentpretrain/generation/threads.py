"""Decoding on several cores: ``use_threads(engine, n)``, what the inference commands' ``--threads`` does.

Prompts, batches and evaluation run through PyTorch, which spreads their matrix products over
``torch.set_num_threads`` threads. A decoding step of one row is different: PyTorch multiplies a single row by a
weight on one thread whatever that setting says, and the step is bound by reading the weights from memory, which a
second core does faster. So for a model of the LLaMA shape on CPU the engine hands those steps to a
``NativeDecoder`` (``generation/native.py``): the whole step in C, its products split over ``n`` threads. Other
models, other devices, int8 layers, or a machine without a C compiler or AVX2 keep PyTorch's one-thread products
(``use_threads`` says which, and why).

Measured by ``bench/threads.py`` against PyTorch and llama.cpp (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.native import native_decoder


def use_threads(engine: Engine, threads: int, native: bool = True) -> str:
    """Run ``engine`` on ``threads`` cores (see the module docstring).

    Args:
        engine: the engine; its ``decoder`` is set (or cleared) and ``decoding`` says what decodes.
        threads: PyTorch's threads and the native decoder's.
        native: use the native decoder where the model and machine allow it.

    Returns:
        What one-row decoding runs on, for the log (and why not natively, when it does not).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    engine.decoder = None
    if not native:
        note = "decoding in PyTorch"
    elif engine.device.type != "cpu":
        note = f"decoding in PyTorch on {engine.device}"
    else:
        engine.decoder, note = native_decoder(engine.model, threads)
    engine.decoding = note
    return note
