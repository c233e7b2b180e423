"""T5's tokenizer: its SentencePiece model with the 100 sentinels ``<extra_id_N>`` appended, as transformers'
``T5Tokenizer`` (``extra_ids=100``) appends them: ``<extra_id_0>`` is the last id of the vocabulary, then
decreasing, so t5-small's 32,000 pieces become 32,100 ids. T5's model has no bos (``bos_id`` None: nothing is put
before a text), eos ``</s>`` (1), pad ``<pad>`` (0, also the decoder's start token) and unk ``<unk>`` (2).

A sentinel written in a text (``"The <extra_id_0> walks in <extra_id_1> park"``) becomes its id, the text around it
encoded piece by piece, as transformers splits its added tokens out. ``--spm_model_path`` names this tokenizer
for a model laid out as T5's (:func:`has_t5_layout`), so a converted T5 is used with its own ``spiece.model``;
``preprocess.py --tokenizer t5`` names it explicitly.
"""

from __future__ import annotations

import re
from pathlib import Path

from tencentpretrain.registry import TOKENIZERS
from tencentpretrain.tokenizers.sentencepiece import SentencePieceTokenizer

SENTINEL = "<extra_id_{}>"
SENTINEL_PATTERN = re.compile(r"<extra_id_(\d+)>")
T5_PIECES = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 of T5's and mT5's SentencePiece models


def has_t5_layout(path: str | Path) -> bool:
    """Whether a SentencePiece model is laid out as T5's: no bos, ``<pad>``, ``</s>``, ``<unk>`` at ids 0, 1, 2 and
    no sentinel of its own. False for a file that is not a model (its reader reports it)."""
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError, TypeError):
        return False
    layout = (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2) and sp.bos_id() < 0
    pieces = tuple(sp.id_to_piece(i) for i in range(min(3, sp.get_piece_size())))
    return layout and pieces == T5_PIECES and sp.piece_to_id(SENTINEL.format(0)) == sp.unk_id()


@TOKENIZERS.register("t5")
class T5Tokenizer(SentencePieceTokenizer):
    """T5's SentencePiece model and its 100 sentinels (module docstring).

    Args:
        model_path: the ``spiece.model`` file.
        special_tokens: overrides, as for ``sentencepiece``; a sentinel may be named (``<extra_id_5>``).
    """

    extra_ids = 100

    def __init__(self, model_path: str | Path, special_tokens: dict[str, int | str] | None = None):
        super().__init__(model_path, special_tokens)
        self.model_size = self.sp.get_piece_size()
        self.sentinel_ids = [self.vocab_size - 1 - i for i in range(self.extra_ids)]

    def model_ids(self) -> dict[str, int | None]:
        ids = super().model_ids()
        return ids | {"bos": None} if ids["bos"] < 0 else ids

    def _sentinel(self, piece: str) -> int | None:
        match = SENTINEL_PATTERN.fullmatch(piece)
        if match is None or int(match.group(1)) >= self.extra_ids:
            return None
        return self.vocab_size - 1 - int(match.group(1))

    def _to_id(self, name: str, value: int | str) -> int:
        if isinstance(value, str) and self._sentinel(value) is not None:
            return self._sentinel(value)
        return super()._to_id(name, value)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without eos; sentinels written in it become their ids."""
        ids, last = [], 0
        for match in SENTINEL_PATTERN.finditer(text):
            sentinel = self._sentinel(match.group(0))
            if sentinel is not None:
                ids += self.sp.encode(text[last:match.start()]) + [sentinel]
                last = match.end()
        return ids + self.sp.encode(text[last:])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if any("<extra_id_" in text for text in texts):
            return [self.encode(text) for text in texts]
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; a sentinel is written as its name, as transformers writes it (no space added around it:
        the space of the piece after it is kept)."""
        text, run = "", []
        for token in [*ids, None]:
            if token is not None and token < self.model_size:
                run.append(token)
                continue
            if run:
                space = " " if text and self.sp.id_to_piece(run[0]).startswith("\u2581") else ""
                text, run = text + space + self.sp.decode(run), []
            if token is not None:
                text += self.id_to_piece(token)
        return text

    def id_to_piece(self, token_id: int) -> str:
        if token_id >= self.model_size:
            return SENTINEL.format(self.vocab_size - 1 - token_id)
        return self.sp.id_to_piece(token_id)


def sentinel_ids(tokenizer) -> list[int]:
    """The ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in that order, as far as they go without a gap: the
    tokenizer's ``sentinel_ids`` where it has them, else the vocabulary's pieces of those names (a Hugging Face T5
    tokenizer.json, TencentPretrain's ``google_zh_with_sentinel_vocab.txt``); empty when it has none."""
    if hasattr(tokenizer, "sentinel_ids"):
        return list(tokenizer.sentinel_ids)
    found = {}
    for i in range(tokenizer.vocab_size):
        match = SENTINEL_PATTERN.fullmatch(tokenizer.id_to_piece(i) or "")
        if match:
            found.setdefault(int(match.group(1)), i)
    ids = []
    while len(ids) in found:
        ids.append(found[len(ids)])
    return ids


__all__ = ["SENTINEL", "T5Tokenizer", "has_t5_layout", "sentinel_ids"]
