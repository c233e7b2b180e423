"""Building blocks shared by the model parts. Importing this package registers the norms,
feed-forward layers, activations and rope scaling types."""

from tencentpretrain.layers import activations, feed_forward, norm, rope_scaling  # noqa: F401  (registration)
from tencentpretrain.layers.attention import MultiHeadedAttention
from tencentpretrain.layers.rope import RotaryEmbedding, apply_rotary
from tencentpretrain.layers.transformer import TransformerLayer

__all__ = ["MultiHeadedAttention", "RotaryEmbedding", "TransformerLayer", "apply_rotary"]
