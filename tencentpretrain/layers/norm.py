"""Normalisation layers by name (the ``layernorm`` key), with TencentPretrain's parameter names."""

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.registry import NORMS


@NORMS.register("normal")
class LayerNorm(nn.Module):
    """Standard layer normalisation (biased variance, eps inside the square root, as GPT-2 and BERT).

    Parameters are called ``gamma`` and ``beta`` as in TencentPretrain checkpoints.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(hidden_size))
        self.beta = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.eps)


@NORMS.register("rms")
class RMSNorm(nn.Module):
    """Root-mean-square normalisation (LLaMA), computed in float32 and cast back before the scale."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same products, one call
            return F.rms_norm(x, self.weight.shape, self.weight, eps=self.eps)
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)  # (..., hidden)
        return self.weight * normed.to(x.dtype)


@NORMS.register("t5")
class T5LayerNorm(nn.Module):
    """T5's layer norm: ``weight * x / sqrt(mean(x^2) + eps)``, with no mean subtracted and no bias.

    The mean square is taken in float32; the normalised values are cast to the weight's dtype before the scale
    (T5's order, where ``rms`` casts to the input's). The parameter is ``weight`` as in TencentPretrain.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (..., 1)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
