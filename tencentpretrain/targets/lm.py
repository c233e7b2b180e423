"""The language-model target: next-token prediction with an ignore index and a loss mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.cross_entropy import linear_cross_entropy
from tencentpretrain.registry import TARGETS

IGNORE_INDEX = -100


@TARGETS.register("lm")
class LmTarget(nn.Module):
    """Projects hidden states to the vocabulary (``target.lm.output_layer``) and scores next tokens.

    With ``tied_head_rescale`` (T5 v1.0, whose head is its word embedding) the states are first multiplied by
    ``hidden_size ** -0.5``.
    """

    label = "tgt"  # (B, T): the token that follows each position, IGNORE_INDEX where none should be scored

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.output_layer = nn.Linear(config.hidden_size, vocab_size, bias=config.has_lmtarget_bias)
        self.input_scale = config.hidden_size ** -0.5 if config.tied_head_rescale else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, T, vocab)."""
        return self.output_layer(self._scaled(hidden))

    def _scaled(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.input_scale is None else hidden * self.input_scale

    def forward(self, hidden: torch.Tensor, tgt: torch.Tensor,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over the positions that count.

        Args:
            hidden: (B, T, hidden) encoder output.
            tgt: (B, T) the token that should follow each position; ``IGNORE_INDEX`` where none should.
            loss_mask: (B, T) optional, nonzero where the loss counts (e.g. the response of an instruction).

        Returns:
            The loss and its metrics: ``loss`` (detached) and ``tokens`` (how many positions counted).
        """
        if loss_mask is not None:
            tgt = tgt.masked_fill(loss_mask == 0, IGNORE_INDEX)
        loss_sum = self._loss_sum(hidden.flatten(0, 1), tgt.flatten())
        tokens = (tgt != IGNORE_INDEX).sum()
        loss = loss_sum / tokens.clamp(min=1)
        return loss, {"loss": loss.detach(), "tokens": tokens}

    def _loss_sum(self, hidden: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of (N, hidden) states against (N,) targets.

        A plain ``nn.Linear`` head goes through the chunked ``linear_cross_entropy`` (no full logits tensor);
        a wrapped head (LoRA), a ZeRO-3 partitioned weight or autocast take the unfused path.
        """
        hidden = self._scaled(hidden)
        head = self.output_layer
        weight = head.weight
        fusable = type(head) is nn.Linear and not hasattr(weight, "ds_id") and not torch.is_autocast_enabled(
            hidden.device.type)
        if fusable:
            return linear_cross_entropy(hidden, weight, head.bias, tgt, IGNORE_INDEX)
        return F.cross_entropy(head(hidden).float(), tgt, ignore_index=IGNORE_INDEX, reduction="sum")
