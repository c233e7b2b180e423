"""Activation functions by name (the ``hidden_act`` key)."""

import torch
import torch.nn.functional as F

from tencentpretrain.registry import ACTIVATIONS


@ACTIVATIONS.register("gelu")
def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    return F.gelu(x)


@ACTIVATIONS.register("gelu_fast")
def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """Tanh-approximated GELU, as in GPT-2 (transformers' ``gelu_new``)."""
    return F.gelu(x, approximate="tanh")


@ACTIVATIONS.register("relu")
def relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


@ACTIVATIONS.register("silu")
def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / swish, the gate of LLaMA's SwiGLU."""
    return F.silu(x)


@ACTIVATIONS.register("linear")
def linear(x: torch.Tensor) -> torch.Tensor:
    """Identity."""
    return x
