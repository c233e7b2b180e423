"""The model: embedding -> encoder -> target, each part looked up by name from the config."""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.embeddings import Embedding
from tencentpretrain.layers.kv_cache import KVCache
from tencentpretrain.layers.rope import RotaryEmbedding
from tencentpretrain.registry import ENCODERS, TARGETS


class Model(nn.Module):
    """A TencentPretrain-style model; ``model(src)`` returns next-token logits (B, T, vocab).

    Attributes:
        config: the architecture it was built from.
        vocab_size: rows of the word embedding and of the LM head.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, checkpoint_activations: bool = False):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = Embedding(config, vocab_size)
        self.encoder = ENCODERS.get(config.encoder)(config, checkpoint_activations=checkpoint_activations)
        self.target = nn.ModuleDict({name: TARGETS.get(name)(config, vocab_size) for name in config.target})

    def reset_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recompute non-persistent buffers (rotary tables), e.g. after building on the meta device."""
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                module.reset(device)

    def encode(self, src: torch.Tensor, positions: torch.Tensor | None = None,
               padding_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states (B, T, hidden) of ``src`` (B, T); see ``TransformerEncoder.forward`` for the rest."""
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + src.shape[1], device=src.device)  # (T,)
        return self.encoder(self.embedding(src, positions), positions, padding_mask, cache)

    def forward(self, src: torch.Tensor, positions: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab)."""
        return self.target["lm"].logits(self.encode(src, positions, padding_mask, cache))

    def loss(self, src: torch.Tensor, tgt: torch.Tensor,
             loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the ``lm`` target's ``(loss, metrics)`` for inputs ``src`` and targets ``tgt``."""
        return self.target["lm"](self.encode(src), tgt, loss_mask)


def tie_weights(model: Model) -> None:
    """Share the word embedding with the LM head (GPT-2's ``tie_weights``)."""
    model.target["lm"].output_layer.weight = model.embedding.word.embedding.weight


def build_model(config: ModelConfig, vocab_size: int | None = None, checkpoint_activations: bool = False) -> Model:
    """Assemble the model a config describes.

    Args:
        config: the architecture.
        vocab_size: rows of the embedding; defaults to ``config.vocab_size``.
        checkpoint_activations: recompute each layer's activations in the backward pass (training).

    Raises:
        ValueError: when neither gives a vocabulary size, or they disagree.
    """
    if vocab_size is None:
        vocab_size = config.vocab_size
    if vocab_size is None:
        raise ConfigError("vocabulary size unknown: set \"vocab_size\" in the config or pass a tokenizer")
    if config.vocab_size is not None and config.vocab_size != vocab_size:
        raise ConfigError(f"vocab_size {config.vocab_size} in {config.source or 'the config'} disagrees with "
                         f"the tokenizer's {vocab_size}")
    model = Model(config, vocab_size, checkpoint_activations)
    if config.tie_weights:
        tie_weights(model)
    return model
