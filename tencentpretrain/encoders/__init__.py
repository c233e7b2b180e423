"""Encoders (``encoder`` key). Importing this package registers them."""

from tencentpretrain.encoders.transformer import TransformerEncoder

__all__ = ["TransformerEncoder"]
