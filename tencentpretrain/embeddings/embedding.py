"""Word and learned-position embeddings, and the sum of the parts a config names."""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.cli import InputError
from tencentpretrain.config import ModelConfig
from tencentpretrain.layers.norm import LayerNorm
from tencentpretrain.registry import EMBEDDINGS


@EMBEDDINGS.register("word")
class WordEmbedding(nn.Module):
    """Token id -> vector (``embedding.word.embedding.weight``)."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.emb_size)

    def forward(self, src: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.embedding(src)  # (B, T, emb)


@EMBEDDINGS.register("pos")
class PositionEmbedding(nn.Module):
    """Learned absolute positions, up to ``max_seq_length`` (``embedding.pos.embedding.weight``)."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(config.max_seq_length, config.emb_size)

    def forward(self, src: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        limit = self.embedding.num_embeddings
        if int(positions.max()) >= limit:
            raise InputError(f"position {int(positions.max())} is beyond max_seq_length {limit} "
                             "of the learned position embedding (a shorter --seq_length fits)")
        return self.embedding(positions).expand(src.shape[0], -1, -1)  # (B, T, emb)


class Embedding(nn.Module):
    """Sums the embeddings named in ``config.embedding`` (each a child module called by its name),
    then applies the optional layer norm and dropout."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.names = list(config.embedding)
        for name in self.names:
            self.add_module(name, EMBEDDINGS.get(name)(config, vocab_size))
        self.layer_norm = None if config.remove_embedding_layernorm else LayerNorm(config.emb_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Embed ``src`` (B, T) at ``positions`` (B, T) or (T,)."""
        emb = sum(getattr(self, name)(src, positions) for name in self.names)  # (B, T, emb)
        if self.layer_norm is not None:
            emb = self.layer_norm(emb)
        return self.dropout(emb)
