"""Tokenizers (``--tokenizer``). Importing this package registers them.

- ``sentencepiece``: a SentencePiece ``.model`` (LLaMA-1/2), given with ``--spm_model_path``.
- ``t5``: T5's SentencePiece ``spiece.model`` with its 100 sentinels appended (``tokenizers/t5.py``), what
  ``--spm_model_path`` gives for a model laid out as T5's (no bos; ``<pad>``, ``</s>``, ``<unk>`` at 0, 1, 2).
- ``huggingface``: a ``tokenizer.json`` or a Hugging Face directory (Llama-3, Qwen, BERT's tokenizer.json, GPT-2's
  vocab.json + merges.txt), given with ``--tokenizer_path``.
- ``bert``: BERT's WordPiece ``vocab.txt``, given with ``--vocab_path`` (TencentPretrain's flag), or with
  ``--tokenizer_path`` to a ``.txt`` file or a directory that has a vocab.txt and no tokenizer.json.

:func:`tokenizer_source` is the one place that decides which of them a command's flags name.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from tencentpretrain.tokenizers.huggingface import HuggingFaceTokenizer, tokenizer_files
from tencentpretrain.tokenizers.sentencepiece import (
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    TokenizerError,
    file_fingerprint,
    read_special_tokens,
)
from tencentpretrain.tokenizers.t5 import T5Tokenizer, has_t5_layout, sentinel_ids
from tencentpretrain.tokenizers.wordpiece import WordPieceTokenizer

TOKENIZER_FLAGS = {
    "--spm_model_path": "a SentencePiece .model",
    "--tokenizer_path": "a tokenizer.json, a Hugging Face directory or a WordPiece vocab.txt",
    "--vocab_path": "a WordPiece vocab.txt (BERT)",
}


class TokenizerSource(NamedTuple):
    """Which tokenizer a command was given: its TOKENIZERS name, its path and the flag that gave it."""

    name: str
    path: str
    flag: str


def tokenizer_kind(path: str | Path) -> str:
    """The TOKENIZERS name of a ``--tokenizer_path``: ``bert`` for a ``.txt`` file or a directory with a vocab.txt
    and no tokenizer.json (nor GPT-2's vocab.json), else ``huggingface``."""
    path = Path(path)
    if path.is_dir():
        hugging_face = any((path / name).is_file() for name in ("tokenizer.json", "vocab.json"))
        return "bert" if not hugging_face and (path / "vocab.txt").is_file() else "huggingface"
    return "bert" if path.suffix == ".txt" else "huggingface"


def tokenizer_source(spm_model_path: str | Path | None, tokenizer_path: str | Path | None,
                     required: bool = True, vocab_path: str | Path | None = None) -> TokenizerSource | None:
    """The tokenizer a command was given by ``--spm_model_path``, ``--tokenizer_path`` or ``--vocab_path``; None
    when none was given and ``required`` is False. TokenizerError when more than one was."""
    given = [(flag, str(path)) for flag, path in (("--spm_model_path", spm_model_path),
                                                 ("--tokenizer_path", tokenizer_path),
                                                 ("--vocab_path", vocab_path)) if path]
    if len(given) > 1:
        flags = [flag for flag, _ in given]
        raise TokenizerError(f"give one of {' and '.join(flags)}, not {'both' if len(flags) == 2 else 'all three'}")
    if not given:
        if required:
            raise TokenizerError("no tokenizer: give " + " or ".join(f"{flag} ({what})" for flag, what in
                                                                   TOKENIZER_FLAGS.items()))
        return None
    flag, path = given[0]
    name = {"--spm_model_path": "t5" if has_t5_layout(path) else "sentencepiece",
            "--vocab_path": "bert"}.get(flag) or tokenizer_kind(path)
    return TokenizerSource(name, path, flag)


def tokenizer_in(folder: str | Path) -> tuple[Path | None, Path | None]:
    """``(SentencePiece model, --tokenizer_path)`` a model directory holds: its ``tokenizer.model``, else the
    directory itself when it has a ``tokenizer.json`` or a ``vocab.txt``; ``(None, None)`` when it has none."""
    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        return folder / "tokenizer.model", None
    has = any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt"))
    return None, folder if has else None


def open_tokenizer(spm_model_path: str | Path | None = None, tokenizer_path: str | Path | None = None,
                   special_tokens: dict[str, int | str] | None = None, vocab_path: str | Path | None = None):
    """The tokenizer named by ``--spm_model_path``, ``--tokenizer_path`` or ``--vocab_path``; errors start with the
    flag."""
    from tencentpretrain.cli import naming
    from tencentpretrain.registry import TOKENIZERS

    source = tokenizer_source(spm_model_path, tokenizer_path, vocab_path=vocab_path)
    with naming(source.flag, source.path):
        return TOKENIZERS.get(source.name)(source.path, special_tokens)


def prefix_ids(tokenizer) -> list[int]:
    """What starts every text the model reads: ``[bos]``, or nothing for a tokenizer without bos (Qwen)."""
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


__all__ = ["ROLE_TOKENS", "SPECIAL_TOKENS", "TOKENIZER_FLAGS", "HuggingFaceTokenizer", "SentencePieceTokenizer",
           "T5Tokenizer", "TokenizerError", "TokenizerSource", "WordPieceTokenizer", "file_fingerprint",
           "has_t5_layout", "open_tokenizer", "prefix_ids", "read_special_tokens", "sentinel_ids", "tokenizer_files",
           "tokenizer_in", "tokenizer_kind", "tokenizer_source"]
