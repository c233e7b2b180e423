"""Multi-head self-attention with grouped-query heads, rotary positions and an optional KV cache."""

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
            mask: boolean (B, 1, T, S), True where a query may attend a key; None when ``is_causal`` says it all.
            is_causal: use SDPA's own causal masking (no cache offset, no padding).
            cache: keys and values of earlier positions, updated in place; it computes the attention
                (``KVCache.attend``), so a cache may lay out its rows as it likes.
            layer: this layer's index in ``cache``.
        """
        batch, length, _ = x.shape
        q = self.linear_layers[0](x).view(batch, length, self.heads_num, self.head_dim)
        k = self.linear_layers[1](x).view(batch, length, self.kv_heads_num, self.head_dim)
        v = self.linear_layers[2](x).view(batch, length, self.kv_heads_num, self.head_dim)
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
