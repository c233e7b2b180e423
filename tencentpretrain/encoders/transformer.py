"""The transformer encoder: a stack of layers, rotary tables or T5's relative position bias, the attention mask and
the final norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tencentpretrain.cache import KVCache
from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.relative_position import RelativePositionEmbedding
from tencentpretrain.layers.rope import RotaryEmbedding
from tencentpretrain.layers.transformer import TransformerLayer
from tencentpretrain.registry import ENCODERS, NORMS


@ENCODERS.register("transformer")
class TransformerEncoder(nn.Module):
    """``layers_num`` transformer layers (``encoder.transformer.{i}``) and, with pre-norm, a final
    ``encoder.layer_norm``. Decoder-only models use it with ``mask: causal``.

    With ``relative_position_embedding`` one bias table, ``encoder.relative_pos_emb``, serves every layer; each layer
    also holds it as ``encoder.transformer.{i}.relative_pos_emb`` (the same module, never called there), because
    TencentPretrain's encoder reads the table from those per-layer names.

    Args:
        config: the architecture.
        checkpoint_activations: while training, recompute each layer's activations in the backward pass instead of
            keeping them (a run setting, not part of the architecture).
    """

    def __init__(self, config: ModelConfig, checkpoint_activations: bool = False):
        super().__init__()
        self.causal = config.mask == "causal"
        self.window = config.sliding_window  # None: every earlier position is visible
        self.relative_pos_emb = None
        if config.relative_position_embedding:
            self.relative_pos_emb = RelativePositionEmbedding(config.heads_num, config.relative_attention_buckets_num,
                                                              bidirectional=not self.causal)
        self.transformer = nn.ModuleList(TransformerLayer(config) for _ in range(config.layers_num))
        if self.relative_pos_emb is not None:
            for layer in self.transformer:
                layer.relative_pos_emb = self.relative_pos_emb  # TencentPretrain's per-layer name, shared
        self.layer_norm = None
        if config.layernorm_positioning == "pre":
            self.layer_norm = NORMS.get(config.layernorm)(config.hidden_size, eps=config.layernorm_eps)
        self.rotary = None
        if config.rotary_position_embedding:
            self.rotary = RotaryEmbedding(config.head_dim, 2 * config.max_seq_length, config.rope_theta,
                                          config.rope_scaling)
        self.checkpoint_activations = checkpoint_activations

    def forward(self, emb: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Encode ``emb`` (B, T, hidden).

        Args:
            emb: embedded input.
            positions: (B, T) or (T,) absolute positions, used by the rotary embedding.
            padding_mask: (B, S) bool, True for real tokens, over cached plus new positions; None when
                there is no padding.
            cache: keys and values of earlier positions (generation), advanced by T on return.
        """
        length = emb.shape[1]
        past = cache.length if cache is not None else 0
        mask = self._mask(length, past, padding_mask, emb.device)
        if self.relative_pos_emb is not None:
            mask = self._with_bias(mask, length, past, emb.dtype)
        is_causal = self.causal and mask is None and past == 0
        rotary = self.rotary(positions) if self.rotary is not None else None
        hidden = emb
        for i, layer in enumerate(self.transformer):
            if self.checkpoint_activations and self.training:
                hidden = checkpoint(layer, hidden, rotary, mask, is_causal,
                                                           use_reentrant=False)
            else:
                hidden = layer(hidden, rotary, mask, is_causal, cache, i)
        if cache is not None:
            cache.advance(length)
        return self.layer_norm(hidden) if self.layer_norm is not None else hidden

    def _with_bias(self, mask: torch.Tensor | None, length: int, past: int, dtype: torch.dtype) -> torch.Tensor:
        """The relative position bias (1, heads, T, S) as a float mask, the dtype's minimum where ``mask`` hides a
        key (a causal encoder's future included)."""
        bias = self.relative_pos_emb(length, past + length, past).to(dtype)  # (1, heads, T, S)
        if mask is None and self.causal and length > 1:
            mask = torch.ones(length, past + length, dtype=torch.bool, device=bias.device).tril(past)[None, None]
        return bias if mask is None else bias.masked_fill(~mask, torch.finfo(dtype).min)  # (B|1, heads, T, S)

    def _mask(self, length: int, past: int, padding_mask: torch.Tensor | None,
              device: torch.device) -> torch.Tensor | None:
        """Boolean (B|1, 1, T, S) mask, or None when SDPA's is_causal (or no mask at all) is exact."""
        total = past + length
        window = self.window if self.window is not None and total > self.window else None
        if padding_mask is None and window is None and (past == 0 or length == 1 or not self.causal):
            return None
        if length == 1 and past > 0 and padding_mask is not None and window is None:  # one decoded token: a view
            return padding_mask[:, None, None, :total]
        mask = torch.ones(length, total, dtype=torch.bool, device=device)
        if self.causal:
            mask = torch.tril(mask, diagonal=past)  # query i sees keys up to past + i
        if window is not None:
            mask = torch.triu(mask, diagonal=past - window + 1)  # ... and from past + i - window + 1 on
        mask = mask[None, None]  # (1, 1, T, S)
        if padding_mask is not None:
            mask = mask & padding_mask[:, None, None, :total]
            mask = mask | ~mask.any(-1, keepdim=True)  # a pad query attends everywhere instead of NaN
        return mask
