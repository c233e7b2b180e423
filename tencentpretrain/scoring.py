"""Scoring held-out text: a document's negative log-likelihood and bits per character.

Bits per character compare models whose tokenizers differ (a longer vocabulary makes fewer, harder tokens):
``sum of the documents' NLL in nats / ln 2 / number of characters``. Each document is scored whole: wrapped in
bos/eos as the ``lm`` processor does for training, every token after bos (eos included) is predicted, and a document
longer than the model's window is scored in consecutive windows, each conditioned on the tokens of its window only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def document_nll(model: torch.nn.Module, ids: list[int], window: int) -> float:
    """Sum of ``-log p(ids[t] | ids[:t])`` (nats) over ``t >= 1``, in windows of ``window`` predicted tokens.

    Args:
        model: maps (1, T) ids to (1, T, vocab) logits.
        ids: the document's token ids, bos first.
        window: most tokens per forward pass (the model's training length is a good choice).
    """
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor(ids[start:start + window + 1])  # window inputs and their next tokens
            logits = model(chunk[None, :-1])[0]  # (T, vocab)
            total += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
    return total


def bits_per_character(model: torch.nn.Module, tokenizer, documents: Iterable[str], window: int) -> float:
    """Bits per character of ``documents`` (each scored whole, see the module docstring).

    Args:
        model: maps (1, T) ids to (1, T, vocab) logits; put it in eval mode first.
        tokenizer: has ``encode(text)``, ``bos_id`` and ``eos_id`` (``SentencePieceTokenizer``).
        documents: the held-out texts.
        window: most tokens per forward pass.
    """
    nats = characters = 0
    for text in documents:
        nats += document_nll(model, [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id], window)
        characters += len(text)
    if characters == 0:
        raise ValueError("no characters to score")
    return nats / math.log(2) / characters
