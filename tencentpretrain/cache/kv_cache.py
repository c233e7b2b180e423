"""A preallocated key/value cache for incremental decoding."""

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer in one preallocated tensor each; nothing is concatenated per token.

    Args:
        layers_num: number of transformer layers.
        batch_size: number of sequences decoded together.
        kv_heads_num: key/value heads per layer.
        max_length: the most positions the cache can hold (prompt plus new tokens).
        head_dim: width of one head.
        dtype: storage dtype (the model's).
        device: where the cache lives.
    """

    def __init__(self, layers_num: int, batch_size: int, kv_heads_num: int, max_length: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (layers_num, batch_size, kv_heads_num, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled so far, the same for every layer once a forward pass ends

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, kv_heads, T, head_dim) after what layer ``layer`` holds; return all of it."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_length} allocated")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               is_causal: bool = False) -> torch.Tensor:
        """Store ``k``/``v`` (B, kv_heads, T, head_dim) (``update``), then attend ``q`` (B, heads, T, head_dim)
        over every position held: (B, heads, T, head_dim).

        Args:
            layer: the layer's index in the cache.
            q, k, v: the new positions' queries, keys and values.
            mask: boolean (B|1, 1, T, S), True where a query may attend a key; None when ``is_causal`` says it all.
            is_causal: SDPA's own causal masking (a first pass with nothing cached, no padding).
        """
        k, v = self.update(layer, k, v)  # (B, kv_heads, S, head_dim)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                              enable_gqa=q.shape[1] != k.shape[1])

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions as filled (called once per forward pass, after the last layer)."""
        self.length += steps
