"""One forward pass over several requests' tokens laid end to end: the running rows' next tokens and prompt chunks.

The continuous batcher (``generation/scheduler.py``) runs each step as one batch of one sequence of ``N`` tokens:
first the next token of each of the ``R`` running rows, then the next chunk of each prompt being prefilled. Every
matrix product of the model (projections, feed-forward, normalisation) then reads its weight once for all of them,
so the running rows' decode rides along with the prompt chunks for a fraction of a decoding step of its own (each
pass streams every weight from memory, whatever its size). Only attention keeps the requests apart: ``RaggedPass``
is the cache the model is given, and its ``attend`` splits the queries, keys and values back per request:

- the ``R`` decode tokens become ``R`` rows of one token against the ``SlotCache`` (each row masked to its own
  span), exactly the batched decoding step;
- each prompt chunk of ``T`` tokens attends to its own one-row ``KVCache`` (the chunks before it and itself,
  causally), exactly as when that prompt is prefilled alone.
"""

from __future__ import annotations

import torch

from tencentpretrain.cache.kv_cache import KVCache
from tencentpretrain.cache.slots import SlotCache


class RaggedPass:
    """The cache of one ragged forward pass (``model.encode`` of a (1, N) input; see the module docstring).

    Args:
        slots: the running rows' cache; its first ``decoding`` rows get one token each (None when none decode).
        decoding: running rows in this pass (their tokens come first).
        chunks: (cache, tokens) of each prompt chunk, in input order; each cache holds that prompt's earlier chunks.
    """

    length = 0  # what the encoder sees as cached: nothing, so it builds no mask of its own; ``attend`` masks

    def __init__(self, slots: SlotCache | None, decoding: int, chunks: list[tuple[KVCache, int]]):
        if decoding and slots is None:
            raise ValueError("decoding rows need the slot cache")
        self.slots, self.decoding, self.chunks = slots, decoding, chunks
        self.decode_mask = slots.open_column()[:, None, None, :] if decoding else None  # (R, 1, 1, S)
        self.chunk_masks = [chunk_mask(tokens, cache.length, cache.keys.device) for cache, tokens in chunks]

    @property
    def tokens(self) -> int:
        """N, the tokens of the pass."""
        return self.decoding + sum(tokens for _, tokens in self.chunks)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Store each request's keys/values in its own cache and attend per request (``mask``/``is_causal`` of the
        encoder are unused): q (1, heads, N, head_dim), k/v (1, kv_heads, N, head_dim) -> (1, heads, N, head_dim)."""
        outs, start = [], self.decoding
        if self.decoding:  # (1, h, R, d) -> (R, h, 1, d): one row per running request
            rows = [x[:, :, :start].transpose(0, 2) for x in (q, k, v)]
            outs.append(self.slots.attend(layer, *rows, self.decode_mask).transpose(0, 2))
        for (cache, tokens), causal in zip(self.chunks, self.chunk_masks):
            end = start + tokens
            parts = [x[:, :, start:end] for x in (q, k, v)]  # (1, h, T, d)
            outs.append(cache.attend(layer, *parts, causal, cache.length == 0))
            start = end
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def advance(self, steps: int) -> None:
        """Mark the pass's columns filled in every cache (the model calls it once, after its last layer)."""
        if steps != self.tokens:
            raise ValueError(f"the pass has {self.tokens} tokens, the model advanced {steps}")
        if self.decoding:
            self.slots.advance(1)
        for cache, tokens in self.chunks:
            cache.advance(tokens)


def chunk_mask(tokens: int, past: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(1, 1, T, past + T) bool: query ``i`` of a chunk sees the ``past`` cached keys and its chunk up to ``i``;
    None where SDPA needs no mask (a first chunk: ``is_causal``; one token: it sees everything)."""
    if past == 0 or tokens == 1:
        return None
    return torch.ones(tokens, past + tokens, dtype=torch.bool, device=device).tril(diagonal=past)[None, None]
