"""Perplexity, bits per character / byte and word perplexity of a corpus, as lm-evaluation-harness defines them.

Each document is scored whole and each of its tokens is predicted exactly once (lm-evaluation-harness's
``loglikelihood_rolling`` with ``context_len=1``). The document is tokenized without bos or eos; the sequence
``S = [bos] + tokens`` is cut into windows that predict ``L`` tokens each (``L = seq_length``); a window predicting
tokens ``[start, end)`` is fed the ``L`` tokens of ``S`` ending just before ``tokens[end - 1]``, i.e.
``S[max(0, end - L):end]``, so the first token is conditioned on bos alone and every later window has a full context
of ``L`` tokens (its first positions re-read tokens scored by the previous window; they are not scored again).

With ``NLL`` the summed negative log-likelihood in nats over all documents::

    token_perplexity   = exp(NLL / tokens)
    bits_per_character = NLL / (characters * ln 2)       characters: Unicode code points
    bits_per_byte      = NLL / (bytes * ln 2)            bytes: UTF-8
    byte_perplexity    = exp(NLL / bytes)
    word_perplexity    = exp(NLL / words)                words: len(re.split(r"\\s+", document)), summed

These are lm-evaluation-harness's ``bits_per_byte``, ``byte_perplexity`` and ``word_perplexity`` (corpus-level:
sums over documents, then the ratio), computed on the same numbers when it is run with ``add_bos_token=False``
(see docs/evaluation.md). Token perplexity depends on the tokenizer; the per-character and per-byte figures do
not, which is what compares a base model with one whose vocabulary was extended.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tencentpretrain.evaluation.scoring import Window, window_nlls
from tencentpretrain.model import Model


def rolling_windows(tokens: Sequence[int], prefix_id: int, seq_length: int) -> list[Window]:
    """The windows that score ``tokens`` once each, with ``prefix_id`` (bos) before the first.

    Args:
        tokens: the document's token ids (no bos, no eos).
        prefix_id: the token the first one is conditioned on.
        seq_length: the most tokens fed to the model at once (>= 1).
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    sequence = [prefix_id, *tokens]
    windows = []
    for start in range(0, len(tokens), seq_length):
        end = min(start + seq_length, len(tokens))
        windows.append(Window(inputs=sequence[max(0, end - seq_length):end], targets=list(tokens[start:end])))
    return windows


def count_words(text: str) -> int:
    """Words as lm-evaluation-harness counts them for ``word_perplexity``: ``len(re.split(r"\\s+", text))``."""
    return len(re.split(r"\s+", text))


@dataclass(frozen=True)
class PerplexityResult:
    """Totals over a corpus and the figures derived from them (see the module docstring)."""

    documents: int
    tokens: int
    characters: int
    bytes: int
    words: int
    nll: float
    seq_length: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_character(self) -> float:
        return self.nll / (self.characters * math.log(2))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.bytes)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    def to_dict(self) -> dict[str, float | int]:
        """Totals and figures, as written to the JSON output."""
        derived = ("token_perplexity", "bits_per_character", "bits_per_byte", "byte_perplexity", "word_perplexity")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}


def evaluate_perplexity(model: Model, tokenizer, documents: Sequence[str], seq_length: int,
                        batch_size: int = 1) -> PerplexityResult:
    """Score every document whole with rolling windows (module docstring).

    Args:
        model: the model, in eval mode.
        tokenizer: has ``encode_batch``, ``bos_id`` and ``pad_id``.
        documents: the texts (non-empty).
        seq_length: the most tokens per forward pass (at most the model's ``max_seq_length``).
        batch_size: windows per forward pass.
    """
    if seq_length > model.config.max_seq_length:
        raise ValueError(f"seq_length {seq_length} exceeds the model's max_seq_length {model.config.max_seq_length}")
    encoded = tokenizer.encode_batch(list(documents))
    first = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id  # lm-eval's prefix_token_id
    windows = [w for tokens in encoded for w in rolling_windows(tokens, first, seq_length)]
    nll = math.fsum(window_nlls(model, windows, batch_size, tokenizer.pad_id, desc="perplexity"))
    return PerplexityResult(
        documents=len(documents), tokens=sum(map(len, encoded)), characters=sum(map(len, documents)),
        bytes=sum(len(doc.encode("utf-8")) for doc in documents), words=sum(map(count_words, documents)),
        nll=nll, seq_length=seq_length)
