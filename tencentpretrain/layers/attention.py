"""Multi-head attention with grouped-query heads, rotary positions and an optional KV cache: self-attention, and
cross-attention over an encoder's output (the decoder of an encoder-decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.cache import KVCache
from tencentpretrain.layers.rope import apply_rotary


class MultiHeadedAttention(nn.Module):
    """Self-attention through ``F.scaled_dot_product_attention``.

    Parameter names follow TencentPretrain: ``linear_layers.{0,1,2}`` project to query, key and value and
    ``final_linear`` projects back. With grouped-query attention the key and value projections have
    ``kv_heads_num * head_dim`` outputs and each key/value head serves ``heads_num / kv_heads_num`` query heads.

    Args:
        hidden_size: width of the residual stream.
        heads_num: query heads.
        kv_heads_num: key/value heads.
        dropout: attention dropout while training.
        bias: biases on all four projections.
        head_dim: width of one head (default ``hidden_size / heads_num``; Qwen3 sets it apart).
        qkv_bias: biases on the query/key/value projections even without ``bias`` (Qwen2).
        qk_norm: a norm class: ``q_norm`` and ``k_norm`` normalise each query and key head before the rotation
            (Qwen3); None for none.
        eps: the norms' epsilon.
        scale: the factor of the scores q.k (default ``1 / sqrt(head_dim)``; T5 uses 1).
    """

    def __init__(self, hidden_size: int, heads_num: int, kv_heads_num: int, dropout: float, bias: bool = True,
                 head_dim: int | None = None, qkv_bias: bool = False, qk_norm: type[nn.Module] | None = None,
                 eps: float = 1e-6, scale: float | None = None):
        super().__init__()
        self.heads_num = heads_num
        self.kv_heads_num = kv_heads_num
        self.head_dim = head_dim or hidden_size // heads_num
        q_size, kv_size = heads_num * self.head_dim, kv_heads_num * self.head_dim
        in_bias = bias or qkv_bias
        self.linear_layers = nn.ModuleList([
            nn.Linear(hidden_size, q_size, bias=in_bias),
            nn.Linear(hidden_size, kv_size, bias=in_bias),
            nn.Linear(hidden_size, kv_size, bias=in_bias),
        ])
        self.final_linear = nn.Linear(q_size, hidden_size, bias=bias)
        self.q_norm = qk_norm(self.head_dim, eps=eps) if qk_norm is not None else None
        self.k_norm = qk_norm(self.head_dim, eps=eps) if qk_norm is not None else None
        self.dropout = dropout
        # SDPA (and every cache's attend) divides by sqrt(head_dim); another scale is folded into the queries.
        self.query_factor = None if scale is None else scale * self.head_dim ** 0.5

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Attend over ``x`` (B, T, hidden).

        Args:
            x: the normalised hidden states.
            rotary: cos and sin from ``RotaryEmbedding`` for these positions, or None without rotary embedding.
            mask: boolean (B, 1, T, S), True where a query may attend a key, or a float (B|1, heads|1, T, S) added to
                the scores (T5's relative position bias, the dtype's minimum where a key is hidden); None when
                ``is_causal`` says it all.
            is_causal: use SDPA's own causal masking (no cache offset, no padding).
            cache: keys and values of earlier positions, updated in place; it computes the attention
                (``KVCache.attend``), so a cache may lay out its rows as it likes.
            layer: this layer's index in ``cache``.
        """
        batch, length, _ = x.shape
        q = self._split(self.linear_layers[0](x), self.heads_num)  # (B, T, heads, head_dim)
        k = self._split(self.linear_layers[1](x), self.kv_heads_num)
        v = self._split(self.linear_layers[2](x), self.kv_heads_num)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # per head, over head_dim
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if self.query_factor is not None:
            q = q * self.query_factor
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        if cache is not None:  # the cache stores k/v and attends over everything it holds (inference)
            out = cache.attend(layer, q, k, v, mask, is_causal)  # (B, heads, T, head_dim)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.kv_heads_num != self.heads_num,
            )  # (B, heads, T, head_dim)
        return self.final_linear(out.transpose(1, 2).reshape(batch, length, -1))

    def _split(self, projected: torch.Tensor, heads: int) -> torch.Tensor:
        """(B, T, heads * head_dim) -> (B, T, heads, head_dim)."""
        return projected.view(*projected.shape[:2], heads, self.head_dim)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, kv_heads, S, head_dim) of ``memory`` (B, S, hidden), the encoder's output: computed
        once per source and reused by every decoding step (cross-attention)."""
        k = self._split(self.linear_layers[1](memory), self.kv_heads_num).transpose(1, 2)
        v = self._split(self.linear_layers[2](memory), self.kv_heads_num).transpose(1, 2)
        return k, v

    def cross(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor],
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention of ``x`` (B, T, hidden) over the encoder's keys and values (:meth:`keys_values`).

        Args:
            x: the normalised decoder states.
            keys_values: (B, kv_heads, S, head_dim) each.
            mask: boolean (B, 1, 1, S), True at the real source tokens; None without padding.
        """
        batch, length, _ = x.shape
        q = self._split(self.linear_layers[0](x), self.heads_num)  # (B, T, heads, head_dim)
        if self.query_factor is not None:
            q = q * self.query_factor
        k, v = keys_values
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             enable_gqa=self.kv_heads_num != self.heads_num)  # (B, heads, T, hd)
        return self.final_linear(out.transpose(1, 2).reshape(batch, length, -1))
