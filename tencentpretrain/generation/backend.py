"""What runs an engine's passes through the model: the ``Backend`` protocol, its PyTorch implementation, and
``choose_backend(model, n)``, what the inference commands' ``--threads`` does.

PyTorch multiplies a single row by a weight on one thread whatever ``torch.set_num_threads`` says, and a decoding
step is bound by reading the weights from memory, which a second core does faster. So for a model of the LLaMA
shape on CPU the passes go to a ``NativeBackend`` (``generation/native/``): decoding steps, prompts and the
continuous batcher's passes, each in one C call, its products split over ``n`` threads. Other models, other
devices, int8 layers, or a machine without a C compiler or AVX2 get the ``TorchBackend`` on ``n`` threads (its
``description`` says why); evaluation's log-likelihoods always do.

Measured by ``bench/threads.py`` against PyTorch and llama.cpp (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from tencentpretrain.cache import KVCache, RaggedPass
from tencentpretrain.generation.native import NativeBackend, Unsupported


class Backend(Protocol):
    """The passes an engine and the batcher run; each stores the new keys and values in the cache it is given and
    advances it by the tokens it read, and runs in inference mode whatever the caller's grad mode.

    Attributes:
        model: the model whose passes these are.
        description: what runs the passes, for logs (``decoding in PyTorch``, ``native decoding on 2 threads``).
    """

    model: nn.Module
    description: str

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None,
                cache: KVCache) -> torch.Tensor:
        """The logits (B, vocab) of the last position of (B, T) left-padded prompts read into the empty ``cache``;
        ``padding_mask`` (B, S >= T) is True for real tokens (None: no padding)."""

    def decode(self, tokens: list[int], positions: list[int], pads: list[int],
               cache: KVCache) -> tuple[torch.Tensor, list[int] | None]:
        """A decoding step from plain lists: token ``tokens[b]`` at rotary position ``positions[b]`` after what row
        b of ``cache`` holds, row b's real tokens starting at its column ``pads[b]``. Returns the logits (B, vocab)
        and each row's argmax when the backend computed it (the greedy tokens), else None."""

    def decode_batch(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor,
                     cache: KVCache) -> tuple[torch.Tensor, list[int] | None]:
        """A decoding step of the batcher: (R, 1) ``tokens`` at (R, 1) ``positions`` after what the first R rows of
        ``cache`` hold, ``padding_mask`` (R, length + 1) True where a row's own tokens are; the logits (R, vocab)
        and, as ``decode``, each row's argmax or None."""

    def read(self, tokens: torch.Tensor, positions: torch.Tensor, ragged: RaggedPass,
             picks: list[int]) -> torch.Tensor:
        """One ragged pass of the batcher over (1, N) ``tokens`` laid out and cached as ``ragged`` says; the logits
        (len(picks), vocab) of the tokens at ``picks`` (the LM head runs on those only)."""


class TorchBackend:
    """The passes through the model's own PyTorch modules (any model, dtype and device).

    Args:
        model: the model.
        description: what runs the passes, for logs.
    """

    def __init__(self, model: nn.Module, description: str = "decoding in PyTorch"):
        self.model, self.description = model, description

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None,
                cache: KVCache) -> torch.Tensor:
        with torch.inference_mode():
            hidden = self.model.encode(tokens, positions, padding_mask, cache)  # (B, T, hidden)
            return self.model.target["lm"].logits(hidden[:, -1:])[:, 0]

    def decode(self, tokens: list[int], positions: list[int], pads: list[int],
               cache: KVCache) -> tuple[torch.Tensor, None]:
        device = self.model.embedding.word.embedding.weight.device
        mask = None
        if any(pads):
            mask = torch.arange(cache.length + 1, device=device) >= torch.tensor(pads, device=device)[:, None]
        ids, at = (torch.tensor(x, dtype=torch.long, device=device)[:, None] for x in (tokens, positions))
        with torch.inference_mode():
            return self.model(ids, at, mask, cache)[:, 0], None

    def decode_batch(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor,
                     cache: KVCache) -> tuple[torch.Tensor, None]:
        with torch.inference_mode():
            return self.model(tokens, positions, padding_mask, cache)[:, 0], None

    def read(self, tokens: torch.Tensor, positions: torch.Tensor, ragged: RaggedPass,
             picks: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            hidden = self.model.encode(tokens, positions, None, ragged)[0]  # (N, hidden)
            return self.model.target["lm"].logits(hidden[picks][None])[0]


def choose_backend(model: nn.Module, threads: int, native: bool = True) -> Backend:
    """The backend for ``model`` on ``threads`` cores (see the module docstring); sets PyTorch's threads.

    Args:
        model: the model, prepared (``weights.prepare_for_inference``) as it will run.
        threads: PyTorch's threads and the native backend's.
        native: use the native backend where the model and machine allow it.

    Returns:
        The backend; its ``description`` says what runs the passes (and why not natively, when they do not).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if not native:
        return TorchBackend(model)
    device = model.embedding.word.embedding.weight.device
    if device.type != "cpu":
        return TorchBackend(model, f"decoding in PyTorch on {device}")
    try:
        return NativeBackend(model, threads)
    except Unsupported as why:
        return TorchBackend(model, f"decoding in PyTorch (not natively: {why})")
