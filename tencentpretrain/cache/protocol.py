"""What the model asks of a cache (``layers/attention.py``, ``encoders/transformer.py``): the small protocol every
cache here implements."""

from __future__ import annotations

from typing import Protocol

import torch


class Cache(Protocol):
    """Keys and values of earlier positions, kept across forward passes.

    Attributes:
        length: the positions every row holds before this pass (the encoder offsets positions and masks by it).
    """

    length: int

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Store layer ``layer``'s new keys and values ``k``/``v`` (B, kv_heads, T, head_dim) and attend ``q``
        (B, heads, T, head_dim) over every position held: (B, heads, T, head_dim)."""

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions filled (called once per forward pass, after the last layer)."""
