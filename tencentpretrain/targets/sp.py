"""Sentence prediction (BERT's next-sentence prediction, ALBERT's sentence order): a two-way choice read from the
first position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.config import ModelConfig
from tencentpretrain.registry import TARGETS


@TARGETS.register("sp")
class SpTarget(nn.Module):
    """``linear_2(tanh(linear_1(h[:, 0])))`` (``target.sp.*``; Hugging Face's ``bert.pooler.dense`` and
    ``cls.seq_relationship``). Label 0: sentence B follows A; 1: it does not (Hugging Face's convention)."""

    label = "tgt_sp"  # (B,)

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(config.hidden_size, config.hidden_size)
        self.linear_2 = nn.Linear(config.hidden_size, 2)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, 2)."""
        return self.linear_2(torch.tanh(self.linear_1(hidden[:, 0])))

    def forward(self, hidden: torch.Tensor, tgt_sp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy of the choice; metrics ``loss``, ``tokens`` (samples) and ``correct``."""
        logits = self.logits(hidden).float()  # (B, 2)
        loss = F.cross_entropy(logits, tgt_sp)
        correct = (logits.argmax(-1) == tgt_sp).sum().detach()
        return loss, {"loss": loss.detach(), "tokens": torch.tensor(len(tgt_sp)), "correct": correct}
