"""Decoders (``decoder`` key) of encoder-decoder models (T5, BART). Importing this package registers them;
decoder-only models (a causal ``transformer`` encoder) say ``"decoder": null``."""

from tencentpretrain.decoders.transformer import Memory, TransformerDecoder

__all__ = ["Memory", "TransformerDecoder"]

