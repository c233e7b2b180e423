"""Embedding parts (``embedding`` key). Importing this package registers them."""

from tencentpretrain.embeddings.embedding import Embedding, PositionEmbedding, SegmentEmbedding, WordEmbedding

__all__ = ["Embedding", "PositionEmbedding", "SegmentEmbedding", "WordEmbedding"]
