"""The binary dataset directory (docs/dataset_format.md): writing it atomically, reading it with numpy.memmap.

Files in a dataset directory:

- ``meta.json``: format version, processor, seq_length, vocab, tokenizer fingerprint, special tokens, counts.
- ``tokens.bin``: every sample's real tokens back to back, ``uint16`` when the vocabulary fits, else ``uint32``.
- ``index.bin``: ``uint64`` offsets (in tokens), ``samples + 1`` of them; sample ``i`` is
  ``tokens[index[i]:index[i+1]]``, padded with the pad id to ``seq_length + 1`` by the reader.
- ``loss_start.bin`` (only where a prompt is masked, e.g. alpaca): ``uint32`` per sample, the first target
  position whose loss counts. Targets ``[loss_start, length - 1)`` count; the others are prompt or pad.
- ``loss_mask.bin`` (chat: several spans per sample): ``uint8`` per token of ``tokens.bin``, 1 where that token is
  a target whose loss counts; it takes the place of ``loss_start`` (whose values are then 0).
- ``seg_start.bin`` and ``labels.bin`` (bert, format version 2): per sample, ``uint32`` the position where the
  second segment starts and ``uint8`` the sentence-prediction label.
- ``sentence_start.bin`` (bart): ``uint8`` per token of ``tokens.bin``, 1 at the first token of each sentence.

Version 2 added ``seg_start.bin`` and ``labels.bin`` (and, later, the optional ``sentence_start.bin``); version 1
datasets (lm, alpaca, chat) are read as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tencentpretrain.checkpoint import replace_dir
from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_json

FORMAT_NAME = "tencentpretrain-binary"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE, TOKENS_FILE, INDEX_FILE, LOSS_START_FILE = "meta.json", "tokens.bin", "index.bin", "loss_start.bin"
LOSS_MASK_FILE = "loss_mask.bin"
SEG_START_FILE, LABELS_FILE = "seg_start.bin", "labels.bin"
SENTENCE_START_FILE = "sentence_start.bin"


class DatasetError(InputError):
    """A dataset directory that is missing, corrupt, or of another format version."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class DatasetWriter:
    """Writes a dataset into a fresh sibling temp directory; :meth:`commit` moves it to ``path``.

    Use as a context manager: leaving the block with an exception (including KeyboardInterrupt) removes the
    temp directory, so a failed run never leaves a dataset behind. ``path`` itself is only replaced at the very
    end (when ``overwrite``), by renaming the finished directory into place.

    Args:
        path: the dataset directory to create.
        vocab_size: decides the token dtype; ids outside ``[0, vocab_size)`` raise.
        overwrite: replace an existing ``path``; without it an existing path raises before any work.
    """

    def __init__(self, path: str | Path, vocab_size: int, overwrite: bool = False):
        self.path, self.vocab_size, self.overwrite = Path(path), vocab_size, overwrite
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path} exists; pass --overwrite to replace it")
        self.dtype = token_dtype(vocab_size)
        self.tokens_written = 0

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self.files = {}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close()
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _close(self) -> None:
        for f in self.files.values():
            f.close()

    def _file(self, name: str):
        if name not in self.files:
            self.files[name] = open(self.tmp / name, "wb")
        return self.files[name]

    def write_tokens(self, ids: np.ndarray) -> None:
        """Append token ids (any integer array)."""
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}): {int(ids.min())}..{int(ids.max())}")
        self._file(TOKENS_FILE).write(ids.astype(self.dtype, copy=False).tobytes())
        self.tokens_written += ids.size

    def truncate_tokens(self, count: int) -> None:
        """Drop every token after the first ``count`` (the tail that no sample uses)."""
        tokens = self._file(TOKENS_FILE)
        tokens.flush()
        tokens.truncate(count * self.dtype.itemsize)
        self.tokens_written = count

    def write_offsets(self, offsets: np.ndarray) -> None:
        """Append sample offsets to the index (the first call starts with offset 0)."""
        self._file(INDEX_FILE).write(np.asarray(offsets, dtype=np.uint64).tobytes())

    def write_loss_start(self, values: np.ndarray) -> None:
        """Append per-sample first counted target positions (processors that mask a prompt)."""
        self._file(LOSS_START_FILE).write(np.asarray(values, dtype=np.uint32).tobytes())

    def write_loss_mask(self, values: np.ndarray) -> None:
        """Append per-token loss flags (1: the token is a counted target), aligned with the tokens written."""
        self._file(LOSS_MASK_FILE).write(np.asarray(values, dtype=np.uint8).tobytes())

    def write_segments(self, seg_start: np.ndarray, labels: np.ndarray) -> None:
        """Append per-sample second-segment starts and sentence-prediction labels (bert)."""
        self._file(SEG_START_FILE).write(np.asarray(seg_start, dtype=np.uint32).tobytes())
        self._file(LABELS_FILE).write(np.asarray(labels, dtype=np.uint8).tobytes())

    def write_sentence_starts(self, flags: np.ndarray) -> None:
        """Append per-token sentence-start flags (bart), aligned with the tokens written."""
        self._file(SENTENCE_START_FILE).write(np.asarray(flags, dtype=np.uint8).tobytes())

    def commit(self, meta: dict[str, Any]) -> Path:
        """Write ``meta.json``, fsync, and move the finished directory to ``path``."""
        self._file(TOKENS_FILE)
        self._close()
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "token_dtype": self.dtype.name, **meta}
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in os.listdir(self.tmp):
            with open(self.tmp / name, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(self.tmp, 0o755)  # mkdtemp made it private
        replace_dir(self.tmp, self.path)
        return self.path


class BinaryDataset:
    """A preprocessed dataset, memory-mapped: O(1) access, pages shared by every process on the machine.

    Args:
        path: the ``--dataset_path`` directory written by ``preprocess.py``.

    ``ds[i]`` returns ``(tokens, loss_mask)``: ``tokens`` int64 ``[seq_length + 1]`` (padded with the pad id),
    ``loss_mask`` bool ``[seq_length]`` aligned with ``tokens[1:]`` (True = the target counts), or None when
    every target counts.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.seq_length = self.meta["seq_length"]
        self.pad_id = self.meta["special_tokens"]["pad"]
        self._open()
        _check_offsets(self.offsets, self.seq_length + 1, self.path / INDEX_FILE)

    def _open(self) -> None:
        dtype = np.dtype(self.meta["token_dtype"])
        samples = self.meta["counts"]["samples"]
        if samples < 1:
            raise DatasetError(f"{self.path / META_FILE}: the dataset has no samples")
        self.offsets = _memmap(self.path / INDEX_FILE, np.uint64, samples + 1)
        if int(self.offsets[0]) != 0:
            raise DatasetError(f"{self.path / INDEX_FILE}: corrupt index (first offset is not 0)")
        self.tokens = _memmap(self.path / TOKENS_FILE, dtype, int(self.offsets[-1]))
        has_mask = (self.path / LOSS_START_FILE).exists()
        self.loss_start = _memmap(self.path / LOSS_START_FILE, np.uint32, samples) if has_mask else None
        has_flags = (self.path / LOSS_MASK_FILE).exists()
        self.loss_mask = _memmap(self.path / LOSS_MASK_FILE, np.uint8, int(self.offsets[-1])) if has_flags else None
        has_segments = (self.path / SEG_START_FILE).exists()
        self.seg_start = _memmap(self.path / SEG_START_FILE, np.uint32, samples) if has_segments else None
        self.labels = _memmap(self.path / LABELS_FILE, np.uint8, samples) if has_segments else None
        has_sentences = (self.path / SENTENCE_START_FILE).exists()
        self.sentence_start = _memmap(self.path / SENTENCE_START_FILE, np.uint8, int(self.offsets[-1])) \
            if has_sentences else None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "seq_length": self.seq_length, "pad_id": self.pad_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        """Real (non-pad) tokens of sample ``i``."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples in {self.path}")
        i %= n
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        tokens = np.full(self.seq_length + 1, self.pad_id, dtype=np.int64)
        tokens[:end - start] = self.tokens[start:end]
        if self.loss_mask is not None:  # targets are tokens[1:]: the flags of the tokens after the first
            mask = np.zeros(self.seq_length, dtype=np.bool_)
            mask[:end - start - 1] = self.loss_mask[start + 1:end]
            return tokens, mask
        first = int(self.loss_start[i]) if self.loss_start is not None else 0
        if first == 0 and end - start == self.seq_length + 1:
            return tokens, None
        mask = np.zeros(self.seq_length, dtype=np.bool_)
        mask[first:end - start - 1] = True
        return tokens, mask


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a dataset directory, checked for format and version."""
    meta_path = path / META_FILE
    if path.is_file():
        raise DatasetError(f"{path}: is a file, expected the dataset directory written by preprocess.py")
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset directory not found (run preprocess.py first)")
    meta = read_json(meta_path, DatasetError, missing=f"{meta_path}: dataset metadata not found")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path}: not a {FORMAT_NAME} dataset (an old pickled dataset.pt? re-run preprocess)")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DatasetError(f"{meta_path}: format version {meta.get('format_version')!r}; this code reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}: re-run preprocess.py")
    missing = [k for k in ("seq_length", "special_tokens", "counts", "token_dtype", "vocab_size") if k not in meta]
    if missing:
        raise DatasetError(f"{meta_path}: missing keys {', '.join(missing)}")
    _check_meta_types(meta, meta_path)
    return meta


def _check_meta_types(meta: dict[str, Any], meta_path: Path) -> None:
    """The values the reader uses must have their types: counts and sizes integers, a known token dtype."""
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    special, counts = meta["special_tokens"], meta["counts"]
    problems = [f"{key} must be a positive integer, got {meta[key]!r}" for key in ("seq_length", "vocab_size")
                if not integer(meta[key]) or meta[key] < 1]
    if meta["token_dtype"] not in ("uint16", "uint32"):
        problems.append(f"token_dtype must be uint16 or uint32, got {meta['token_dtype']!r}")
    if not isinstance(special, dict) or not integer(special.get("pad")):
        problems.append(f"special_tokens must hold an integer pad id, got {special!r}")
    if not isinstance(counts, dict) or not integer(counts.get("samples")) or counts["samples"] < 0:
        problems.append(f"counts must hold the number of samples, got {counts!r}")
    if problems:
        raise DatasetError(f"{meta_path}: {'; '.join(problems)}; the metadata is corrupt (re-run preprocess.py)")


def _check_offsets(offsets: np.ndarray, most: int, path: Path, block: int = 1 << 20) -> None:
    """Sample lengths must be in ``[0, most]``; read block by block, so memory stays small for any dataset."""
    for start in range(0, len(offsets) - 1, block):
        lengths = np.diff(offsets[start:start + block + 1].astype(np.int64))
        if (lengths < 0).any() or (lengths > most).any():
            sample = start + int(np.flatnonzero((lengths < 0) | (lengths > most))[0])
            raise DatasetError(f"{path}: corrupt index: sample {sample} has {int(lengths[sample - start])} tokens; "
                               f"a sample has 0 to seq_length + 1 = {most}")


def _memmap(path: Path, dtype: np.dtype, count: int) -> np.memmap:
    """A read-only memmap of exactly ``count`` items; a size mismatch means a corrupt or truncated file."""
    dtype = np.dtype(dtype)
    try:
        size = path.stat().st_size
    except OSError:
        raise DatasetError(f"{path}: missing dataset file") from None
    if size != count * dtype.itemsize:
        raise DatasetError(f"{path}: {size} bytes, expected {count * dtype.itemsize} ({count} x {dtype.name}); "
                           "the dataset is corrupt or truncated")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
