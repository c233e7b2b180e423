"""Tokenizers (``--tokenizer``). Importing this package registers them.

- ``sentencepiece``: a SentencePiece ``.model`` (LLaMA-1/2), given with ``--spm_model_path``.
- ``huggingface``: a ``tokenizer.json`` or a Hugging Face directory (Llama-3, Qwen, GPT-2's vocab.json + merges.txt),
  given with ``--tokenizer_path``.
"""

from __future__ import annotations

from pathlib import Path

from tencentpretrain.tokenizers.huggingface import HuggingFaceTokenizer, tokenizer_files
from tencentpretrain.tokenizers.sentencepiece import (
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    TokenizerError,
    file_fingerprint,
    read_special_tokens,
)
from tencentpretrain.tokenizers.wordpiece import WordPieceTokenizer

TOKENIZER_FLAGS = {"sentencepiece": "--spm_model_path", "huggingface": "--tokenizer_path"}


def tokenizer_source(spm_model_path: str | Path | None, tokenizer_path: str | Path | None,
                     required: bool = True) -> tuple[str, str] | None:
    """``(registered name, path)`` of the tokenizer a command was given: ``--spm_model_path`` (SentencePiece) or
    ``--tokenizer_path`` (Hugging Face); None when neither was given and ``required`` is False."""
    if spm_model_path and tokenizer_path:
        raise TokenizerError("give one of --spm_model_path (SentencePiece) and --tokenizer_path (Hugging Face "
                             "tokenizer.json), not both")
    if tokenizer_path:
        return "huggingface", str(tokenizer_path)
    if spm_model_path:
        return "sentencepiece", str(spm_model_path)
    if required:
        raise TokenizerError("no tokenizer: give --spm_model_path (a SentencePiece .model) or --tokenizer_path "
                             "(a tokenizer.json or a Hugging Face directory)")
    return None


def tokenizer_in(folder: str | Path) -> tuple[Path | None, Path | None]:
    """``(SentencePiece model, Hugging Face tokenizer)`` a model directory holds: its ``tokenizer.model``, else the
    directory itself when it has a ``tokenizer.json``; ``(None, None)`` when it has neither."""
    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        return folder / "tokenizer.model", None
    return None, folder if (folder / "tokenizer.json").is_file() else None


def open_tokenizer(spm_model_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                   special_tokens: dict[str, int | str] | None = None):
    """The tokenizer named by ``--spm_model_path`` or ``--tokenizer_path``; errors start with the flag."""
    from tencentpretrain.cli import naming
    from tencentpretrain.registry import TOKENIZERS

    name, path = tokenizer_source(spm_model_path, tokenizer_path)
    with naming(TOKENIZER_FLAGS[name], path):
        return TOKENIZERS.get(name)(path, special_tokens)


def prefix_ids(tokenizer) -> list[int]:
    """What starts every text the model reads: ``[bos]``, or nothing for a tokenizer without bos (Qwen)."""
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


__all__ = ["SPECIAL_TOKENS", "TOKENIZER_FLAGS", "HuggingFaceTokenizer", "SentencePieceTokenizer", "TokenizerError",
           "file_fingerprint", "open_tokenizer", "prefix_ids", "read_special_tokens", "tokenizer_files",
           "tokenizer_in", "tokenizer_source"]
