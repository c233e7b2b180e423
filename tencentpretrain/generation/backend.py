"""Choosing what runs an engine's passes: ``choose_backend(engine, n)``, what the inference commands' ``--threads``
does.

PyTorch multiplies a single row by a weight on one thread whatever ``torch.set_num_threads`` says, and a decoding
step is bound by reading the weights from memory, which a second core does faster. So for a model of the LLaMA
shape on CPU the engine hands its passes to a ``NativeBackend`` (``generation/native/``): decoding steps, prompts
and the continuous batcher's passes, each in one C call, its products split over ``n`` threads. Other models,
other devices, int8 layers, or a machine without a C compiler or AVX2 stay in PyTorch on ``n`` threads
(``choose_backend`` says which, and why); evaluation's log-likelihoods always do.

Measured by ``bench/threads.py`` against PyTorch and llama.cpp (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.native import native_backend


def choose_backend(engine: Engine, threads: int, native: bool = True) -> str:
    """Run ``engine`` on ``threads`` cores (see the module docstring).

    Args:
        engine: the engine; its ``decoder`` is set (or cleared) and ``decoding`` says what decodes.
        threads: PyTorch's threads and the native decoder's.
        native: use the native decoder where the model and machine allow it.

    Returns:
        What the passes run on, for the log (and why not natively, when they do not).
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
        engine.decoder, note = native_backend(engine.model, threads)
    engine.decoding = note
    return note
