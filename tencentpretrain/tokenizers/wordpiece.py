"""BERT's WordPiece tokenizer (``--tokenizer bert``) over a ``vocab.txt``: one token a line, its id the line number.

The rules are BertTokenizer's (transformers' Python one; its Rust ``BertTokenizerFast`` gives the same ids except on
text written in decomposed Unicode, which the Python one composes first, as we do):

1. the special tokens written in the text are cut out first and kept whole;
2. the rest is cleaned (NUL, U+FFFD and control characters dropped, whitespace made a space), a space is put around
   every CJK ideograph, the text is NFC-composed and split on whitespace;
3. uncased: each word is lowercased and its accents stripped (NFD, combining marks dropped); then split on
   punctuation (ASCII symbols and every Unicode ``P*`` character);
4. each word becomes its longest vocabulary prefix, then ``##``-prefixed longest pieces of the rest; a word with no
   such split, or longer than 100 characters, becomes ``[UNK]``.

Lowercasing (``do_lower_case``) comes from a ``tokenizer_config.json`` beside the vocabulary when it says; else the
vocabulary decides: one whose tokens (specials and ``[bracketed]`` placeholders aside) hold no ASCII capital letter is
uncased. ``strip_accents`` and ``tokenize_chinese_chars`` are read from that file too.

Special tokens are ``[PAD]`` ``[UNK]`` ``[CLS]`` ``[SEP]`` ``[MASK]``, renamed by ``tokenizer_config.json`` or
``special_tokens_map.json`` (``cls_token`` ...). For the code that treats every tokenizer alike, bos is ``[CLS]`` and
eos ``[SEP]``, as TencentPretrain reads a BERT vocabulary: the ``lm`` processor writes ``[CLS] text [SEP]``, BERT's
own layout, and generation stops at ``[SEP]``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from tencentpretrain.jsonfile import read_json_object, read_text
from tencentpretrain.registry import TOKENIZERS
from tencentpretrain.tokenizers.sentencepiece import SPECIAL_TOKENS, TokenizerError, files_fingerprint

BERT_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MAX_WORD_CHARS = 100
CONTINUATION = "##"
# BERT's CJK Unified Ideographs blocks (Hangul, kana and CJK punctuation are not among them)
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# the spaces a decoded token loses before it (transformers' WordPiece decoder with cleanup, per token)
TOKEN_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# transformers' clean_up_tokenization_spaces=True, over the whole text
TEXT_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
PLACEHOLDER = re.compile(r"\[[^\]]*\]")


def read_vocab(path: str | Path) -> dict[str, int]:
    """Token -> id of a ``vocab.txt`` (one token a line, id = line number, CRLF and a final newline accepted);
    TokenizerError naming the file and line of an empty or repeated token."""
    path = Path(path)
    if path.suffix in (".json", ".model"):
        raise TokenizerError(f"{path}: expected a WordPiece vocab.txt (a tokenizer.json goes to --tokenizer_path, a "
                             "SentencePiece .model to --spm_model_path)")
    lines = read_text(path, TokenizerError, what="a WordPiece vocab.txt").split("\n")
    if lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        token = line.removesuffix("\r")
        if not token:
            raise TokenizerError(f"{path}: line {number} is empty (a vocab.txt has one token a line)")
        if token in vocab:
            raise TokenizerError(f"{path}: line {number}: token {token!r} already on line {vocab[token] + 1}")
        vocab[token] = number - 1
    if not vocab:
        raise TokenizerError(f"{path}: empty vocabulary")
    return vocab


def vocab_file(path: str | Path) -> Path:
    """The ``vocab.txt`` that ``path`` names: the file, or the one in a directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise TokenizerError(f"{path}: a directory without vocab.txt")
        return path / "vocab.txt"
    if not path.is_file():
        raise TokenizerError(f"{path}: vocabulary file not found")
    return path


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def is_punctuation(char: str) -> bool:
    """BERT's punctuation: every non-alphanumeric printable ASCII character, and Unicode's ``P*`` categories."""
    code = ord(char)
    return 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126 or \
        unicodedata.category(char).startswith("P")


def is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def clean(text: str, split_cjk: bool = True) -> str:
    """Drop NUL, U+FFFD and control characters, make every whitespace a space and (``split_cjk``) put spaces around
    CJK ideographs."""
    out = []
    for char in text:
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            out.append(" ")
        elif char == "\0" or char == "\ufffd" or unicodedata.category(char).startswith("C"):
            continue
        elif split_cjk and is_cjk(char):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out)


def strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def split_punctuation(word: str) -> list[str]:
    """``word`` cut before and after every punctuation character (each its own piece)."""
    pieces, current = [], []
    for char in word:
        if is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces


@TOKENIZERS.register("bert")
class WordPieceTokenizer:
    """BERT's WordPiece tokenizer over a ``vocab.txt`` (``--vocab_path``, or ``--tokenizer_path`` to the file or a
    directory holding it without a tokenizer.json).

    Args:
        model_path: the ``vocab.txt`` or its directory.
        special_tokens: overrides for ``bos``/``eos``/``pad``/``unk``, each a token or an id (``cls``/``sep``/
            ``mask`` stay the vocabulary's).
        lowercase: lowercase the text (default: tokenizer_config.json's ``do_lower_case``, else detected from the
            vocabulary).

    Attributes:
        cls_id, sep_id, pad_id, unk_id: the ids of ``[CLS]`` ``[SEP]`` ``[PAD]`` ``[UNK]``.
        mask_id: ``[MASK]``'s id, None when the vocabulary has none.
        bos_id, eos_id: ``cls_id`` and ``sep_id`` (unless overridden); ``end_ids`` is ``(eos_id,)``.
        lowercase: whether text is lowercased (and its accents stripped, unless ``strip_accents`` is false).
    """

    def __init__(self, model_path: str | Path, special_tokens: dict[str, int | str] | None = None,
                 lowercase: bool | None = None):
        self.model_path = Path(model_path)
        self.file = vocab_file(self.model_path)
        self.vocab = read_vocab(self.file)
        self.pieces = list(self.vocab)
        self.vocab_size = len(self.pieces)
        self.config_files = [self.file.parent / name for name in CONFIG_FILES if (self.file.parent / name).is_file()]
        config: dict = {}
        for config_file in reversed(self.config_files):  # tokenizer_config.json wins over special_tokens_map.json
            config |= read_json_object(config_file, TokenizerError, what="a tokenizer config")
        self.config = config
        names = {key: _token_text(config.get(f"{key}_token")) or default for key, default in BERT_TOKENS.items()}
        source = self.config_files[0].name if self.config_files else "BERT's default"
        ids = {key: self.vocab.get(text) for key, text in names.items()}
        for key in ("pad", "unk", "cls", "sep"):
            if ids[key] is None:
                raise TokenizerError(f"{self.file}: no {key} token {names[key]!r} ({source}) in the vocabulary")
        self.cls_id, self.sep_id, self.mask_id = ids["cls"], ids["sep"], ids["mask"]
        ids |= {"bos": ids["cls"], "eos": ids["sep"]}
        for name, value in (special_tokens or {}).items():
            if name not in SPECIAL_TOKENS:
                raise TokenizerError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}")
            ids[name] = self._to_id(name, value)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = ids["bos"], ids["eos"], ids["pad"], ids["unk"]
        self.end_ids = (self.eos_id,)
        extra = [t for t in map(_token_text, config.get("additional_special_tokens") or []) if t in self.vocab]
        self.never_split = {text for text in names.values() if text in self.vocab} | set(extra)
        self._special_pattern = re.compile("|".join(re.escape(t) for t in sorted(self.never_split, key=len,
                                                                                   reverse=True)))
        self.lowercase = self._lowercase() if lowercase is None else lowercase
        self.accents = config.get("strip_accents")  # None: strip them when lowercasing
        self.split_cjk = config.get("tokenize_chinese_chars", True) is not False

    def _lowercase(self) -> bool:
        if isinstance(self.config.get("do_lower_case"), bool):
            return self.config["do_lower_case"]
        return not any(any("A" <= c <= "Z" for c in token) for token in self.pieces
                       if token not in self.never_split and not PLACEHOLDER.fullmatch(token))

    def _to_id(self, name: str, value: int | str) -> int:
        if isinstance(value, int):
            if not 0 <= value < self.vocab_size:
                raise TokenizerError(f"special token {name}={value} is outside the {self.vocab_size} tokens of "
                                     f"{self.file}")
            return value
        if value not in self.vocab:
            raise TokenizerError(f"special token {name}={value!r} is not a token of {self.file}")
        return self.vocab[value]

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special token ids by name (bos/eos/pad/unk, as every tokenizer has)."""
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "unk": self.unk_id}

    @property
    def fingerprint(self) -> str:
        """sha256 over the vocabulary and the files its special tokens and casing come from."""
        return files_fingerprint(self.file, self.config_files)

    def words(self, text: str) -> list[str]:
        """BERT's basic tokenization of ``text`` (no special tokens in it): cleaned, cased, split words."""
        words = []
        for word in unicodedata.normalize("NFC", clean(text, self.split_cjk)).split():
            if word in self.never_split:
                words.append(word)
                continue
            if self.lowercase:
                word = word.lower()
            if self.accents or (self.lowercase and self.accents is None):
                word = strip_accents(word)
            words += split_punctuation(word)
        return words

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first ids of one word; ``[UNK]`` for the whole word when it does not split."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            prefix = CONTINUATION if start else ""
            for end in range(len(word), start, -1):
                token_id = self.vocab.get(prefix + word[start:end])
                if token_id is not None:
                    ids.append(token_id)
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without ``[CLS]``/``[SEP]`` around it; special tokens written in the text become
        their ids, as in transformers."""
        ids, start = [], 0
        for match in self._special_pattern.finditer(text) if self.never_split else ():
            ids += self._encode_plain(text[start:match.start()])
            ids.append(self.vocab[match.group()])
            start = match.end()
        return ids + self._encode_plain(text[start:])

    def _encode_plain(self, text: str) -> list[int]:
        return [i for word in self.words(text) for i in self.wordpiece(word)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        """Text of ``ids`` as transformers 5's BertTokenizer decodes it: tokens joined by spaces, ``##`` pieces glued
        to the one before, no space before ``.``, ``,``, ``!``, ``?``; special tokens kept.
        ``clean_up_tokenization_spaces`` also joins ``'`` and the English contractions (``don ' t`` -> ``don't``),
        as transformers' option of that name."""
        parts = []
        for i, token_id in enumerate(ids):
            piece = self.pieces[token_id]
            if i:
                piece = piece.removeprefix(CONTINUATION) if piece.startswith(CONTINUATION) else f" {piece}"
            for dirty, tidy in TOKEN_CLEANUP:
                piece = piece.replace(dirty, tidy)
            parts.append(piece)
        text = "".join(parts)
        if clean_up_tokenization_spaces:
            for dirty, tidy in TEXT_CLEANUP:
                text = text.replace(dirty, tidy)
        return text

    def id_to_piece(self, token_id: int) -> str:
        """The token's line of ``vocab.txt`` (``##`` marks a piece continuing a word)."""
        return self.pieces[token_id]

    def piece_to_id(self, piece: str) -> int | None:
        """The id of a vocabulary token, None when it is not one."""
        return self.vocab.get(piece)
