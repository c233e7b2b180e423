"""How well tokenizers compress a corpus: characters, bytes, tokens, tokens per character, byte-fallback share.

The byte-fallback share counts the tokens that hold less than a whole character: SentencePiece's ``<0x..>``
pieces, and a byte-level BPE's single bytes of a multi-byte UTF-8 character (the characters its merges never
reached).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_text
from tencentpretrain.tokenizers import SentencePieceTokenizer, WordPieceTokenizer, open_tokenizer


@dataclass(frozen=True)
class TokenizerStats:
    """Encoding figures of one tokenizer on one corpus (each line encoded whole, without bos/eos)."""

    tokenizer: str
    vocab_size: int
    characters: int
    bytes: int
    tokens: int
    byte_tokens: int

    @property
    def tokens_per_character(self) -> float:
        return self.tokens / max(self.characters, 1)

    @property
    def byte_fallback_share(self) -> float:
        """Fraction of the tokens that are byte-fallback pieces (``<0x..>``)."""
        return self.byte_tokens / max(self.tokens, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_character": self.tokens_per_character,
                "byte_fallback_share": self.byte_fallback_share}


def corpus_lines(corpus_path: str | Path, max_lines: int | None = None) -> list[str]:
    """The non-empty lines of a text corpus (at most ``max_lines``)."""
    lines = [line for line in read_text(corpus_path, InputError, "a text corpus").splitlines() if line.strip()]
    return lines[:max_lines] if max_lines is not None else lines


def byte_pieces(tokenizer) -> list[bool]:
    """Per id: whether the token holds less than a whole character (module docstring)."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return [tokenizer.sp.is_byte(i) for i in range(tokenizer.vocab_size)]
    if isinstance(tokenizer, WordPieceTokenizer):  # no bytes: an unknown word is [UNK]
        return [False] * tokenizer.vocab_size
    from tokenizers import decoders
    from tokenizers.pre_tokenizers import ByteLevel

    to_text = decoders.ByteLevel()  # a byte of 0x80 or above alone is no UTF-8 character: it decodes to U+FFFD
    high = {c for c in ByteLevel.alphabet() if to_text.decode([c]) == "\ufffd"}
    return [tokenizer.id_to_piece(i) in high for i in range(tokenizer.vocab_size)]


def tokenizer_stats(lines: list[str], spm_model_path: str | Path | None = None, batch: int = 256,
                    tokenizer_path: str | Path | None = None, vocab_path: str | Path | None = None) -> TokenizerStats:
    """Encode ``lines`` with one tokenizer (a SentencePiece model, a Hugging Face tokenizer or a WordPiece
    vocab.txt) and count."""
    tokenizer = open_tokenizer(spm_model_path, tokenizer_path, vocab_path=vocab_path)
    is_byte = byte_pieces(tokenizer)
    tokens = byte_tokens = 0
    for start in range(0, len(lines), batch):
        for ids in tokenizer.encode_batch(lines[start:start + batch]):
            tokens += len(ids)
            byte_tokens += sum(is_byte[i] for i in ids)
    return TokenizerStats(str(tokenizer_path or spm_model_path or vocab_path), tokenizer.vocab_size,
                          sum(map(len, lines)), sum(len(line.encode("utf-8")) for line in lines), tokens, byte_tokens)


def format_table(rows: list[TokenizerStats]) -> str:
    """The figures side by side, one row per tokenizer."""
    head = f"{'tokenizer':<40} {'vocab':>7} {'chars':>10} {'bytes':>10} {'tokens':>10} {'tok/char':>8} {'bytes%':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = r.tokenizer if len(r.tokenizer) <= 40 else "..." + r.tokenizer[-37:]
        lines.append(f"{name:<40} {r.vocab_size:>7} {r.characters:>10} {r.bytes:>10} {r.tokens:>10} "
                     f"{r.tokens_per_character:>8.3f} {100 * r.byte_fallback_share:>6.2f}%")
    return "\n".join(lines)
