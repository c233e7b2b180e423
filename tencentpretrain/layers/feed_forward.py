"""Position-wise feed-forward layers by name (the ``feed_forward`` key)."""

import torch
from torch import nn

from tencentpretrain.registry import ACTIVATIONS, FEED_FORWARDS


@FEED_FORWARDS.register("dense")
class DenseFeedForward(nn.Module):
    """``linear_2(act(linear_1(x)))``, as in GPT-2 and BERT."""

    def __init__(self, hidden_size: int, feedforward_size: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=bias)
        self.act = ACTIVATIONS.get(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


@FEED_FORWARDS.register("gated")
class GatedFeedForward(nn.Module):
    """Gated linear unit (SwiGLU with ``silu``): ``linear_2(act(linear_gate(x)) * linear_1(x))``."""

    def __init__(self, hidden_size: int, feedforward_size: int, hidden_act: str, bias: bool = True):
        super().__init__()
        self.linear_gate = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_1 = nn.Linear(hidden_size, feedforward_size, bias=bias)
        self.linear_2 = nn.Linear(feedforward_size, hidden_size, bias=bias)
        self.act = ACTIVATIONS.get(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_gate(x)) * self.linear_1(x))
