"""What the t5 and bart data share: the noise the loader puts on a stored sample, and the seq2seq batch.

A t5 or bart dataset stores plain text (``data/t5.py``: a packed stream; ``data/bart.py``: sentences of documents).
The loader corrupts each sample with a generator seeded by (seed, epoch, sample), as it masks bert samples, so every
epoch sees new noise and a resumed run sees exactly the noise the uninterrupted one would. Each processor class has
a ``noiser(meta)`` giving the object whose ``pair(tokens, sentence_start, rng)`` returns ``(source, labels)``; the
loader pads them into the batch :func:`collate_pairs` builds:

- ``src`` (B, S) encoder ids, padded with the pad id; ``seg`` (B, S) 1 for real tokens, 0 for padding;
- ``tgt_in`` (B, T) decoder input ids: the labels shifted right behind the decoder start token (T5: the pad id;
  BART: ``</s>``, transformers' ``decoder_start_token_id`` for both), padded with the pad id;
- ``tgt_seg`` (B, T) 1 for real decoder positions, 0 for padding;
- ``tgt`` (B, T) the labels: the next target token at each position, IGNORE_INDEX at padding.
"""

from __future__ import annotations

import numpy as np
import torch

from tencentpretrain.data.corpus import RecordError
from tencentpretrain.registry import DATA_PROCESSORS
from tencentpretrain.targets import IGNORE_INDEX


def noiser_of(meta: dict) -> object | None:
    """The noiser of a t5 or bart dataset (its processor class's ``noiser``), None for every other dataset."""
    name = meta.get("data_processor")
    if name not in DATA_PROCESSORS:
        return None
    build = getattr(DATA_PROCESSORS.get(name), "noiser", None)
    return None if build is None else build(meta)


def collate_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], seq_length: int, tgt_seq_length: int, pad_id: int,
                  start_id: int) -> dict[str, torch.Tensor]:
    """The batch tensors of ``(source, labels)`` pairs (module docstring); ValueError for a pair too long (a bug:
    the processors bound both lengths)."""
    rows = len(pairs)
    src = np.full((rows, seq_length), pad_id, np.int64)
    tgt_in = np.full((rows, tgt_seq_length), pad_id, np.int64)
    tgt = np.full((rows, tgt_seq_length), IGNORE_INDEX, np.int64)
    for row, (source, labels) in enumerate(pairs):
        if len(source) > seq_length or len(labels) > tgt_seq_length:
            raise ValueError(f"a pair of {len(source)} and {len(labels)} tokens for {seq_length} and {tgt_seq_length}")
        src[row, :len(source)] = source
        tgt[row, :len(labels)] = labels
        tgt_in[row, 0] = start_id
        tgt_in[row, 1:len(labels)] = labels[:-1]
    source_lengths = np.array([len(source) for source, _ in pairs])[:, None]
    label_lengths = np.array([len(labels) for _, labels in pairs])[:, None]
    return {"src": torch.from_numpy(src),  # (B, S)
            "seg": torch.from_numpy((np.arange(seq_length) < source_lengths).astype(np.int64)),  # (B, S)
            "tgt_in": torch.from_numpy(tgt_in),  # (B, T)
            "tgt_seg": torch.from_numpy((np.arange(tgt_seq_length) < label_lengths).astype(np.int64)),  # (B, T)
            "tgt": torch.from_numpy(tgt)}  # (B, T)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of True in a bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def check_fraction(value: float, option: str) -> None:
    """RecordError naming ``option`` unless ``0 < value < 1``."""
    if not 0 < value < 1:
        raise RecordError(f"{option} {value} must be between 0 and 1 (exclusive)")


def check_target_length(spec, needed: int, what: str) -> int:
    """The target length: ``--tgt_seq_length`` when given (RecordError when shorter than ``needed``), else
    ``needed``."""
    if spec.tgt_seq_length is None:
        return needed
    if spec.tgt_seq_length < needed:
        raise RecordError(f"--tgt_seq_length {spec.tgt_seq_length} is too short: {what} need {needed} tokens "
                          f"(with --seq_length {spec.seq_length}); give at least {needed} or leave it out")
    return spec.tgt_seq_length
