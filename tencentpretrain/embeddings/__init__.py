"""Embedding parts (``embedding`` key). Importing this package registers them."""

from tencentpretrain.embeddings.embedding import Embedding, PositionEmbedding, WordEmbedding

__all__ = ["Embedding", "PositionEmbedding", "WordEmbedding"]
