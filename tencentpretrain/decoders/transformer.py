"""The transformer decoder of an encoder-decoder (T5, BART): causal self-attention over the target, cross-attention
over the encoder's output (the memory), and a feed-forward layer, each in a residual branch, pre- or post-norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tencentpretrain.cache import KVCache
from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.attention import MultiHeadedAttention
from tencentpretrain.layers.relative_position import RelativePositionEmbedding
from tencentpretrain.registry import DECODERS, FEED_FORWARDS, NORMS


@dataclass
class Memory:
    """What the decoder reads of the encoded source.

    Attributes:
        hidden: (B, S, hidden) the encoder's output.
        mask: (B, 1, 1, S) bool, True at real source tokens; None without padding.
        keys_values: each decoder layer's cross-attention keys and values (B, kv_heads, S, head_dim), computed once
            for generation; None to compute them in the forward pass (training).
    """

    hidden: torch.Tensor
    mask: torch.Tensor | None = None
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def attention(config: ModelConfig) -> MultiHeadedAttention:
    """One attention block of the decoder, with the encoder's projections, biases and scale."""
    return MultiHeadedAttention(config.hidden_size, config.heads_num, config.kv_heads_num, config.dropout,
                                bias=not config.remove_transformer_bias, head_dim=config.head_dim,
                                qkv_bias=config.qkv_bias, scale=1.0 if config.remove_attention_scale else None)


class TransformerDecoderLayer(nn.Module):
    """Self-attention (``self_attn``), cross-attention (``context_attn``) and ``feed_forward``, normalised by
    ``layer_norm_1``, ``_2``, ``_3`` (TencentPretrain's names)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        norm = NORMS.get(config.layernorm)
        self.pre_norm = config.layernorm_positioning == "pre"
        self.self_attn = attention(config)
        self.context_attn = attention(config)
        self.feed_forward = FEED_FORWARDS.get(config.feed_forward)(config.hidden_size, config.feedforward_size,
                                                                   config.hidden_act,
                                                                   bias=not config.remove_transformer_bias)
        for i in (1, 2, 3):
            self.add_module(f"layer_norm_{i}", norm(config.hidden_size, eps=config.layernorm_eps))
            self.add_module(f"dropout_{i}", nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """Transform ``x`` (B, T, hidden); ``mask``/``is_causal``/``cache`` go to the self-attention,
        ``keys_values``/``memory_mask`` to the cross-attention."""
        branches = (
            lambda h: self.dropout_1(self.self_attn(h, None, mask, is_causal, cache, layer)),
            lambda h: self.dropout_2(self.context_attn.cross(h, keys_values, memory_mask)),
            lambda h: self.dropout_3(self.feed_forward(h)),
        )
        norms = (self.layer_norm_1, self.layer_norm_2, self.layer_norm_3)
        for branch, norm in zip(branches, norms, strict=True):
            x = x + branch(norm(x)) if self.pre_norm else norm(x + branch(x))
        return x


@DECODERS.register("transformer")
class TransformerDecoder(nn.Module):
    """``decoder_layers_num`` layers (``decoder.transformer_decoder.{i}``), with pre-norm a final
    ``decoder.layer_norm``, and with ``relative_position_embedding`` the causal bias table ``decoder.self_pos_emb``.

    Args:
        config: the architecture.
        checkpoint_activations: while training, recompute each layer's activations in the backward pass.
    """

    def __init__(self, config: ModelConfig, checkpoint_activations: bool = False):
        super().__init__()
        self.self_pos_emb = None
        if config.relative_position_embedding:
            self.self_pos_emb = RelativePositionEmbedding(config.heads_num, config.relative_attention_buckets_num,
                                                          bidirectional=False)
        self.transformer_decoder = nn.ModuleList(TransformerDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = None
        if config.layernorm_positioning == "pre":
            self.layer_norm = NORMS.get(config.layernorm)(config.hidden_size, eps=config.layernorm_eps)
        self.checkpoint_activations = checkpoint_activations

    def keys_values(self, hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values of the encoder output ``hidden`` (B, S, hidden)."""
        return [layer.context_attn.keys_values(hidden) for layer in self.transformer_decoder]

    def forward(self, emb: torch.Tensor, memory: Memory, padding_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Decode ``emb`` (B, T, hidden), the embedded target, against ``memory``.

        Args:
            emb: embedded decoder input.
            memory: the encoded source.
            padding_mask: (B, S') bool, True at real target tokens, over cached plus new positions; None without
                padding.
            cache: the self-attention keys and values of earlier target positions (generation), advanced by T.
        """
        length = emb.shape[1]
        past = cache.length if cache is not None else 0
        mask = self._mask(length, past, padding_mask, emb)
        is_causal = mask is None and past == 0
        keys_values = memory.keys_values or self.keys_values(memory.hidden)
        hidden = emb
        for i, layer in enumerate(self.transformer_decoder):
            if self.checkpoint_activations and self.training:
                hidden = checkpoint(layer, hidden, keys_values[i], memory.mask, mask, is_causal, use_reentrant=False)
            else:
                hidden = layer(hidden, keys_values[i], memory.mask, mask, is_causal, cache, i)
        if cache is not None:
            cache.advance(length)
        return self.layer_norm(hidden) if self.layer_norm is not None else hidden

    def _mask(self, length: int, past: int, padding_mask: torch.Tensor | None,
              emb: torch.Tensor) -> torch.Tensor | None:
        """The self-attention mask: causal, padding, and the relative position bias as a float mask added to the
        scores; None when SDPA's is_causal (or no mask at all, one new token without padding) is exact."""
        total = past + length
        if self.self_pos_emb is None and padding_mask is None and (past == 0 or length == 1):
            return None
        visible = torch.ones(length, total, dtype=torch.bool, device=emb.device).tril(diagonal=past)[None, None]
        if padding_mask is not None:
            visible = visible & padding_mask[:, None, None, :total]
            visible = visible | ~visible.any(-1, keepdim=True)  # a pad query attends everywhere instead of NaN
        if self.self_pos_emb is None:
            return visible  # (B|1, 1, T, S)
        bias = self.self_pos_emb(length, total, past).to(emb.dtype)  # (1, heads, T, S)
        return bias.masked_fill(~visible, torch.finfo(emb.dtype).min)  # (B|1, heads, T, S)
