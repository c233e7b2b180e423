"""T5's sentinels: the ``<extra_id_N>`` tokens that stand for the spans cut out of a T5 input."""

from __future__ import annotations

import re

SENTINEL = "<extra_id_{}>"
SENTINEL_PATTERN = re.compile(r"<extra_id_(\d+)>")


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
