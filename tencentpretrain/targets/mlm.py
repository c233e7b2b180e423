"""BERT's masked language model target: predict the original token at each masked position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.norm import LayerNorm
from tencentpretrain.registry import ACTIVATIONS, TARGETS
from tencentpretrain.targets.lm import IGNORE_INDEX


@TARGETS.register("mlm")
class MlmTarget(nn.Module):
    """``linear_2(layer_norm(act(linear_1(h))))`` at the masked positions (``target.mlm.*``, TencentPretrain's names;
    Hugging Face's ``cls.predictions``). ``linear_2`` always has a bias; with ``tie_weights`` its weight is the word
    embedding. The norm uses ``layernorm_eps`` (BERT's 1e-12)."""

    label = "tgt_mlm"  # (B, T): the original token where the input was masked, IGNORE_INDEX elsewhere

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS.get(config.hidden_act)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layernorm_eps)
        self.linear_2 = nn.Linear(config.hidden_size, vocab_size)

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., hidden): what the vocabulary projection reads."""
        return self.layer_norm(self.act(self.linear_1(hidden)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T, vocab): scores of every token at every position (fill-mask)."""
        return self.linear_2(self.transform(hidden))

    def forward(self, hidden: torch.Tensor, tgt_mlm: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over the masked positions; only those go through the head.

        Returns:
            The loss and its metrics: ``loss``, ``tokens`` (masked positions) and ``correct`` (argmax right).
        """
        picked = tgt_mlm.flatten() != IGNORE_INDEX  # (B*T,)
        states = self.transform(hidden.flatten(0, 1)[picked])  # (N, hidden)
        labels = tgt_mlm.flatten()[picked]  # (N,)
        tokens = picked.sum()
        logits = self.linear_2(states).float()  # (N, vocab): only the masked positions, about 15% of them
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.detach().argmax(-1) == labels).sum()
        loss = loss_sum / tokens.clamp(min=1)
        return loss, {"loss": loss.detach(), "tokens": tokens, "correct": correct}
