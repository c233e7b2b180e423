"""Rotary position embedding in the layout of Meta's LLaMA and TencentPretrain.

Each head's features are rotated in interleaved pairs ``(x[2i], x[2i+1])`` by angle ``pos * theta^(-2i/d)``.
transformers' Llama rotates halves ``(x[i], x[i+d/2])`` instead; the checkpoint conversion permutes the q/k
projection rows between the two layouts (``tencentpretrain.convert.llama.permute_rotary``).
"""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.config import RopeScaling
from tencentpretrain.layers.rope_scaling import inv_frequencies


class RotaryEmbedding(nn.Module):
    """Cos/sin tables computed once, kept as non-persistent buffers, grown on demand.

    Args:
        head_dim: width of one attention head (even).
        max_positions: positions to precompute.
        theta: the rotary base (10000 for LLaMA, 500000 for Llama-3).
        scaling: the config's ``rope_scaling`` (frequencies from ``layers/rope_scaling.py``), or None.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0,
                 scaling: RopeScaling | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = scaling
        self.attention_factor = inv_frequencies(head_dim, theta, scaling)[1]  # the scale of cos and sin
        self.dynamic = scaling is not None and scaling.rope_type == "dynamic"
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos", cos, persistent=False)  # (positions, head_dim / 2)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, positions: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = inv_frequencies(self.head_dim, self.theta, self.scaling)[0].to(device)  # (head_dim / 2,)
        angles = torch.outer(torch.arange(positions, device=device).float(), inv_freq)  # (positions, head_dim / 2)
        return self._scaled(angles)

    def _scaled(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attention_factor == 1.0:
            return angles.cos(), angles.sin()
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Recompute the tables on ``device`` (they are not saved in checkpoints)."""
        self.cos, self.sin = self._tables(self.cos.shape[0], torch.device(device))

    def _apply(self, fn, recurse=True):
        """Moves follow the model, casts do not: the tables stay float32 (``model.to(torch.bfloat16)`` would
        otherwise round them, and the complex rotation has no bfloat16 kernel)."""
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            self.reset(self.cos.device)
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos and sin for ``positions`` (B, T) or (T,), shaped to broadcast over (B, T, heads, head_dim / 2)."""
        needed = int(positions.max()) + 1
        original = self.scaling.original_max_position_embeddings if self.dynamic else None
        if self.dynamic and needed > original:  # dynamic NTK: frequencies for this length, not cached
            inv_freq, _ = inv_frequencies(self.head_dim, self.theta, self.scaling, needed)
            angles = positions[..., None].float() * inv_freq.to(positions.device)  # (..., T, head_dim / 2)
            cos, sin = self._scaled(angles)
            return cos.unsqueeze(-2), sin.unsqueeze(-2)
        if needed > self.cos.shape[0]:
            self.cos, self.sin = self._tables(max(needed, 2 * self.cos.shape[0]), self.cos.device)
        cos, sin = self.cos[positions], self.sin[positions]  # (B, T, head_dim / 2) or (T, head_dim / 2)
        return cos.unsqueeze(-2), sin.unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved feature pairs of ``x`` (B, T, heads, head_dim) by the given angles.

    Each pair ``(even, odd)`` is one complex number multiplied by ``cos + i sin``: one fused kernel forward and
    backward instead of a handful of elementwise ops.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, T, heads, head_dim / 2)
    rotated = torch.view_as_real(pairs * torch.complex(cos, sin))  # (B, T, heads, head_dim / 2, 2)
    return rotated.flatten(-2).to(x.dtype)
