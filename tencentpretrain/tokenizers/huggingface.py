"""Hugging Face tokenizers (``--tokenizer_path``): a ``tokenizer.json`` (Llama-3's and Qwen's byte-level BPE), a
Hugging Face directory holding one, or GPT-2's ``vocab.json`` + ``merges.txt``; run by the ``tokenizers`` library
that transformers itself uses, so the ids are transformers'.

Special tokens come from ``tokenizer_config.json`` beside the file (``special_tokens_map.json`` as a fallback), as
transformers reads them: Llama-3 has bos ``<|begin_of_text|>`` and eos ``<|end_of_text|>``; Qwen has no bos
(``bos`` is then None and nothing is put before a document) and eos ``<|im_end|>``. A tokenizer without a pad
token pads with its eos (padding is never attended to nor counted in the loss).

``end_ids`` are every token that ends a generated answer: eos, the ``eos_token_id`` list of a
``generation_config.json`` beside the file, and the end-of-turn tokens the vocabulary defines (Llama-3's
``<|eot_id|>``, ``<|eom_id|>`` and ``<|end_of_text|>``; Qwen's ``<|im_end|>`` and ``<|endoftext|>``).
"""

from __future__ import annotations

from pathlib import Path

from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.registry import TOKENIZERS
from tencentpretrain.tokenizers.sentencepiece import ROLE_TOKENS, SPECIAL_TOKENS, TokenizerError, files_fingerprint

END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<|end|>")
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def tokenizer_files(path: str | Path) -> tuple[Path, list[Path]]:
    """The tokenizer file ``path`` names (``tokenizer.json`` or GPT-2's ``vocab.json``) and the files beside it that
    hold its special tokens; TokenizerError naming the path when there is none."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.json"):
            if (path / name).is_file():
                return tokenizer_files(path / name)
        raise TokenizerError(f"{path}: a directory without tokenizer.json (or vocab.json + merges.txt)")
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer file not found")
    if path.suffix != ".json":
        raise TokenizerError(f"{path}: expected a tokenizer.json, GPT-2's vocab.json or a Hugging Face directory "
                             "(a SentencePiece .model goes to --spm_model_path)")
    if path.name == "vocab.json" and not (path.parent / "merges.txt").is_file():
        raise TokenizerError(f"{path}: GPT-2's vocab.json needs merges.txt beside it")
    return path, [path.parent / name for name in CONFIG_FILES if (path.parent / name).is_file()]


def _load(path: Path):
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    try:
        if path.name == "vocab.json":
            tokenizer = Tokenizer(BPE.from_file(str(path), str(path.parent / "merges.txt")))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            return tokenizer
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the library raises a plain Exception with a serde message
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TokenizerError(f"{path}: not a Hugging Face tokenizer ({detail})") from None


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, ``{"content": ...}`` or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@TOKENIZERS.register("huggingface")
class HuggingFaceTokenizer:
    """Encodes text with a Hugging Face ``tokenizer.json`` (or GPT-2's vocab.json + merges.txt).

    Args:
        model_path: the file or the Hugging Face directory (``--tokenizer_path``).
        special_tokens: overrides for ``bos``/``eos``/``pad``/``unk``, each a token or an id.
    """

    def __init__(self, model_path: str | Path, special_tokens: dict[str, int | str] | None = None):
        self.model_path = Path(model_path)
        self.file, self.config_files = tokenizer_files(self.model_path)
        self.tk = _load(self.file)
        vocab = self.tk.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        config: dict = {}
        for config_file in reversed(self.config_files):  # tokenizer_config.json wins over special_tokens_map.json
            config |= read_json_object(config_file, TokenizerError, what="a tokenizer config")
        self.config = config
        named = {name: _token_text(config.get(f"{name}_token")) for name in SPECIAL_TOKENS + ROLE_TOKENS}
        for role, name in (("cls", "bos"), ("sep", "eos")):
            if named[name] is None:
                named[name] = named[role]  # BERT
        if self.file.name == "vocab.json" and named["eos"] is None and "<|endoftext|>" in vocab:
            named["eos"] = "<|endoftext|>"  # GPT-2
        source = self.config_files[0].name if self.config_files else self.file.name
        ids = {name: None if text is None else self._to_id(name, text, source) for name, text in named.items()}
        if config.get("add_bos_token") is False and "bos" not in (special_tokens or {}):
            ids["bos"] = None  # named but never put before a text (Qwen2's bos <|endoftext|>)
        for name, value in (special_tokens or {}).items():
            if name not in SPECIAL_TOKENS + ROLE_TOKENS:
                raise TokenizerError(f"unknown special token {name!r}; known: "
                                     f"{', '.join(SPECIAL_TOKENS + ROLE_TOKENS)}")
            ids[name] = self._to_id(name, value, "the override")
        if ids["eos"] is None:
            raise TokenizerError(f"{self.file}: no eos token (tokenizer_config.json's eos_token); give one with "
                                 "--eos_token")
        if ids["pad"] is None:
            ids["pad"] = ids["eos"]
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = ids["bos"], ids["eos"], ids["pad"], ids["unk"]
        self.cls_id, self.sep_id, self.mask_id = ids["cls"], ids["sep"], ids["mask"]
        self.end_ids = self._end_ids(vocab)

    def _to_id(self, name: str, value: int | str, source) -> int:
        if isinstance(value, int):
            if not 0 <= value < self.vocab_size:
                raise TokenizerError(f"special token {name}={value} is outside the {self.vocab_size} tokens of "
                                     f"{self.file}")
            return value
        token_id = self.tk.token_to_id(value)
        if token_id is None:
            raise TokenizerError(f"special token {name}={value!r} ({source}) is not a token of {self.file}")
        return token_id

    def _end_ids(self, vocab: dict[str, int]) -> tuple[int, ...]:
        ends = [self.eos_id]
        generation = self.file.parent / "generation_config.json"
        if generation.is_file():
            listed = read_json_object(generation, TokenizerError, what="a generation config").get("eos_token_id")
            ends += [i for i in (listed if isinstance(listed, list) else [listed]) if isinstance(i, int)]
        ends += [vocab[token] for token in END_OF_TURN if token in vocab]
        return tuple(dict.fromkeys(i for i in ends if 0 <= i < self.vocab_size))

    @property
    def special_tokens(self) -> dict[str, int | None]:
        """The special token ids by name (None: the tokenizer has none)."""
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "unk": self.unk_id}

    @property
    def fingerprint(self) -> str:
        """sha256 over the tokenizer file and the files its special tokens come from."""
        return files_fingerprint(self.file, self.config_files)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without bos/eos; special tokens written in the text become their ids, as in
        transformers."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts at once (the library's batched Rust path, without offsets)."""
        encode = getattr(self.tk, "encode_batch_fast", self.tk.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens kept; an incomplete UTF-8 character at the end decodes to U+FFFD)."""
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        """The token's string in the vocabulary (byte-level: ``Ġ`` for a space)."""
        return self.tk.id_to_token(token_id)
