"""Tokenizers (``--tokenizer``). Importing this package registers them."""

from tencentpretrain.tokenizers.sentencepiece import (
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    TokenizerError,
    file_fingerprint,
    read_special_tokens,
)

__all__ = ["SPECIAL_TOKENS", "SentencePieceTokenizer", "TokenizerError", "file_fingerprint", "read_special_tokens"]
