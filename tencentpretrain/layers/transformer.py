"""One transformer layer: attention and feed-forward, each in a residual branch, pre- or post-norm."""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.cache import KVCache
from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.attention import MultiHeadedAttention
from tencentpretrain.registry import FEED_FORWARDS, NORMS


class TransformerLayer(nn.Module):
    """A transformer block. LLaMA's is this block with ``layernorm: rms``, ``feed_forward: gated`` and
    ``hidden_act: silu``; GPT-2's with ``layernorm: normal`` and ``feed_forward: dense``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        bias = not config.remove_transformer_bias
        self.pre_norm = config.layernorm_positioning == "pre"
        norm = NORMS.get(config.layernorm)
        self.self_attn = MultiHeadedAttention(config.hidden_size, config.heads_num, config.kv_heads_num,
                                              config.dropout, bias=bias, head_dim=config.head_dim,
                                              qkv_bias=config.qkv_bias, qk_norm=norm if config.qk_norm else None,
                                              eps=config.layernorm_eps,
                                              scale=1.0 if config.remove_attention_scale else None)
        self.feed_forward = FEED_FORWARDS.get(config.feed_forward)(config.hidden_size, config.feedforward_size,
                                                                   config.hidden_act, bias=bias)
        self.layer_norm_1 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.layer_norm_2 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.dropout_1 = nn.Dropout(config.dropout)
        self.dropout_2 = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotary=None, mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Transform ``x`` (B, T, hidden); the attention arguments are passed through to ``self_attn``."""

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.dropout_1(self.self_attn(h, rotary, mask, is_causal, cache, layer))

        if self.pre_norm:
            x = x + attend(self.layer_norm_1(x))
            return x + self.dropout_2(self.feed_forward(self.layer_norm_2(x)))
        x = self.layer_norm_1(x + attend(x))
        return self.layer_norm_2(x + self.dropout_2(self.feed_forward(x)))
