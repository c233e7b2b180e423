"""SentencePiece tokenizer (LLaMA's), with special tokens read from the model and overridable."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.registry import TOKENIZERS

SPECIAL_TOKENS = ("bos", "eos", "pad", "unk")
ROLE_TOKENS = ("cls", "sep", "mask")  # optional: a BERT-style processor's; None where a tokenizer has none


class TokenizerError(InputError):
    """A tokenizer model or special-token setting that cannot be used; the message names the file."""


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, the identity of a tokenizer recorded in datasets and checked by training."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(path: str | Path, config_files: tuple[Path, ...] | list[Path] = ()) -> str:
    """A tokenizer file's identity together with the config files its special tokens come from: the file's own
    :func:`file_fingerprint` when there are none, else sha256 over each file's fingerprint in order."""
    if not config_files:
        return file_fingerprint(path)
    digest = hashlib.sha256()
    for each in (path, *config_files):
        digest.update(file_fingerprint(each).encode())
    return digest.hexdigest()


def read_special_tokens(path: str | Path) -> dict[str, int | str]:
    """Read a special-tokens JSON file: ``{"bos": "<s>", "eos": 2, "pad": "<unk>"}`` (pieces or ids).

    TencentPretrain's ``*_special_tokens_map.json`` keys (``pad_token``, ``unk_token``, ``cls_token``,
    ``sep_token``, ``mask_token``) are accepted too: ``cls_token`` is read as bos and cls, ``sep_token`` as eos and
    sep, ``mask_token`` as mask (the ROLE_TOKENS a BERT processor asks for).
    """
    aliases = {"pad_token": "pad", "unk_token": "unk", "cls_token": "cls", "sep_token": "sep",
               "bos_token": "bos", "eos_token": "eos", "mask_token": "mask"}
    data = read_json_object(path, TokenizerError, missing=f"{path}: special tokens file not found",
                            what="special tokens")
    out = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in SPECIAL_TOKENS + ROLE_TOKENS:
            raise TokenizerError(f"{path}: unknown special token {key!r}; known: "
                                 f"{', '.join(SPECIAL_TOKENS + ROLE_TOKENS)}")
        out[name] = value
    for role, name in (("cls", "bos"), ("sep", "eos")):
        if role in out:
            out.setdefault(name, out[role])
    return out


def _load_processor(path: Path):
    """A SentencePieceProcessor for ``path``; TokenizerError naming the file when it is not a model."""
    import sentencepiece

    if path.is_dir():
        raise TokenizerError(f"{path}: is a directory, expected a SentencePiece .model file")
    if not path.is_file():
        raise TokenizerError(f"{path}: SentencePiece model not found")
    size = path.stat().st_size
    if size == 0:
        raise TokenizerError(f"{path}: empty file (0 bytes), not a SentencePiece model")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        detail = "unreadable model data" if "parse ModelProto" in str(err) else \
            (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TokenizerError(f"{path}: not a SentencePiece model ({size} bytes; {detail})") from None


@TOKENIZERS.register("sentencepiece")
class SentencePieceTokenizer:
    """Encodes text with a SentencePiece model.

    Args:
        model_path: the ``.model`` file (``--spm_model_path``).
        special_tokens: overrides for ``bos``/``eos``/``pad``/``unk``, each a piece or an id. Without an
            override each comes from the model; a model without a pad piece (LLaMA) pads with ``unk``. ``cls``,
            ``sep`` and ``mask`` (``cls_id``, ``sep_id``, ``mask_id``) are None unless given here.
    """

    extra_ids = 0  # pieces appended after the model's (T5's sentinels: tokenizers/t5.py)

    def __init__(self, model_path: str | Path, special_tokens: dict[str, int | str] | None = None):
        self.model_path = Path(model_path)
        self.sp = _load_processor(self.model_path)
        self.vocab_size = self.sp.get_piece_size() + self.extra_ids
        ids = self.model_ids()
        roles = dict.fromkeys(ROLE_TOKENS)
        for name, value in (special_tokens or {}).items():
            if name not in SPECIAL_TOKENS + ROLE_TOKENS:
                raise TokenizerError(f"unknown special token {name!r}; known: "
                                     f"{', '.join(SPECIAL_TOKENS + ROLE_TOKENS)}")
            (roles if name in ROLE_TOKENS else ids)[name] = self._to_id(name, value)
        if ids["pad"] < 0:
            ids["pad"] = ids["unk"]
        for name, value in (ids | roles).items():
            if value is not None and not 0 <= value < self.vocab_size:
                raise TokenizerError(f"{self.model_path}: the model defines no {name} token; give one with a "
                                 "special-tokens override")
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = ids["bos"], ids["eos"], ids["pad"], ids["unk"]
        self.cls_id, self.sep_id, self.mask_id = roles["cls"], roles["sep"], roles["mask"]
        self.end_ids = (self.eos_id,)  # the tokens that end a generated answer

    def model_ids(self) -> dict[str, int | None]:
        """The special token ids the model defines (-1 where it has none)."""
        return {"bos": self.sp.bos_id(), "eos": self.sp.eos_id(), "pad": self.sp.pad_id(), "unk": self.sp.unk_id()}

    def _to_id(self, name: str, value: int | str) -> int:
        if isinstance(value, int):
            return value
        piece_id = self.sp.piece_to_id(value)
        if piece_id == self.sp.unk_id() and value != self.sp.id_to_piece(self.sp.unk_id()):
            raise TokenizerError(f"special token {name}={value!r} is not a piece of {self.model_path}")
        return piece_id

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special token ids by name."""
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "unk": self.unk_id}

    @property
    def fingerprint(self) -> str:
        """sha256 of the model file."""
        return file_fingerprint(self.model_path)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without bos/eos."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts at once (SentencePiece's batched C++ path)."""
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        return self.sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)
