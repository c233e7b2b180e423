"""Word, learned-position and segment embeddings, and the sum of the parts a config names.

Every part is called as ``part(src, positions, seg)``; ``seg`` (B, T) numbers the segments from 1 (BERT's sentence A
is 1, sentence B is 2) and is 0 at padding, as TencentPretrain's ``seg`` is.
"""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.layers.norm import LayerNorm
from tencentpretrain.registry import EMBEDDINGS

SEGMENTS = 3  # rows of the segment embedding: 0 padding, 1 the first segment, 2 the second


@EMBEDDINGS.register("word")
class WordEmbedding(nn.Module):
    """Token id -> vector (``embedding.word.embedding.weight``)."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.emb_size)

    def forward(self, src: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding(src)  # (B, T, emb)


@EMBEDDINGS.register("pos")
class PositionEmbedding(nn.Module):
    """Learned absolute positions, up to ``max_seq_length`` (``embedding.pos.embedding.weight``)."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(config.max_seq_length, config.emb_size)

    def forward(self, src: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        limit = self.embedding.num_embeddings
        if int(positions.max()) >= limit:
            raise InputError(f"position {int(positions.max())} is beyond max_seq_length {limit} "
                             "of the learned position embedding (a shorter --seq_length fits)")
        return self.embedding(positions).expand(src.shape[0], -1, -1)  # (B, T, emb)


@EMBEDDINGS.register("seg")
class SegmentEmbedding(nn.Module):
    """BERT's segment (token type) embedding, ``embedding.seg.embedding.weight`` with 3 rows: row 0 for padding,
    rows 1 and 2 for Hugging Face's token types 0 and 1. Without ``seg`` every token is in segment 1."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(SEGMENTS, config.emb_size)

    def forward(self, src: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        if seg is None:
            return self.embedding.weight[1].expand(*src.shape, -1)  # (B, T, emb)
        if seg.shape != src.shape:
            raise InputError(f"seg has shape {tuple(seg.shape)}, the input ids {tuple(src.shape)}")
        return self.embedding(seg)  # (B, T, emb)


class Embedding(nn.Module):
    """Sums the embeddings named in ``config.embedding`` (each a child module called by its name),
    then applies the optional layer norm (``layernorm_eps``, BERT's 1e-12; BART's ``layernorm_embedding``) and
    dropout. An encoder-decoder's ``tgt_embedding`` is a second one, built with ``names=config.tgt_embedding``."""

    def __init__(self, config: ModelConfig, vocab_size: int, names: tuple[str, ...] | None = None):
        super().__init__()
        self.names = list(config.embedding if names is None else names)
        for name in self.names:
            self.add_module(name, EMBEDDINGS.get(name)(config, vocab_size))
        self.layer_norm = None if config.remove_embedding_layernorm else LayerNorm(config.emb_size,
                                                                                   eps=config.layernorm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Embed ``src`` (B, T) at ``positions`` (B, T) or (T,), in segments ``seg`` (B, T) if given."""
        emb = sum(getattr(self, name)(src, positions, seg) for name in self.names)  # (B, T, emb)
        if self.layer_norm is not None:
            emb = self.layer_norm(emb)
        return self.dropout(emb)
