"""The training data loader: sharded, reshuffled every epoch, infinite, and exactly resumable.

Sharding rule: epoch ``e`` uses the permutation ``numpy.random.default_rng([seed, e]).permutation(N)``
(``arange(N)`` without shuffle). It is lengthened to a multiple of the global batch ``world_size *
batch_size`` by repeating its own first entries (like torch's DistributedSampler), so every rank gets the same
number of full batches and every sample is seen at least once per epoch; at most ``global batch - 1`` samples
are seen twice. Global batch ``b`` is ``perm[b * W * B:(b + 1) * W * B]``, and rank ``r`` takes its slice
``[r * B:(r + 1) * B]``: ranks never overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tencentpretrain.data.seq2seq import collate_pairs, noiser_of
from tencentpretrain.errors import InputError
from tencentpretrain.targets import IGNORE_INDEX


@dataclass(frozen=True)
class Batch:
    """One batch for one rank.

    Attributes:
        src: (B, seq_length) input ids (``tokens[:-1]`` for the lm target).
        tgt: (B, seq_length) next-token ids, ``tokens[1:]``, IGNORE_INDEX where the loss must not count (lm);
            (B, tgt_seq_length) the decoder's labels, IGNORE_INDEX at padding (t5, bart).
        tokens: real (non-pad) tokens in ``src``.
        epoch: the epoch this batch belongs to.
        index: the batch number within the epoch (per rank).
        seg: (B, seq_length) segments numbered from 1, 0 at padding, when the data has segments (BERT).
        tgt_mlm: (B, seq_length) original ids at the masked positions, IGNORE_INDEX elsewhere (mlm).
        tgt_sp: (B,) sentence-prediction labels (sp).
        tgt_in: (B, tgt_seq_length) decoder input ids, the labels ``tgt`` shifted right behind the decoder start
            token (t5, bart: ``data/seq2seq.py``).
        tgt_seg: (B, tgt_seq_length) 1 for real decoder positions, 0 for padding (t5, bart).
    """

    src: torch.Tensor
    tgt: torch.Tensor | None
    tokens: int
    epoch: int
    index: int
    seg: torch.Tensor | None = None
    tgt_mlm: torch.Tensor | None = None
    tgt_sp: torch.Tensor | None = None
    tgt_in: torch.Tensor | None = None
    tgt_seg: torch.Tensor | None = None

    def inputs(self) -> dict[str, torch.Tensor]:
        """The tensors the model reads (``Model.loss``), by name; absent ones left out."""
        names = ("src", "tgt", "seg", "tgt_mlm", "tgt_sp", "tgt_in", "tgt_seg")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class DataLoader:
    """Infinite iterator of :class:`Batch` over a :class:`~tencentpretrain.data.BinaryDataset`.

    Args:
        dataset: anything with ``len``, ``ds[i] -> (tokens, loss_mask)`` and ``ds.length(i)``.
        batch_size: samples per batch on this rank.
        rank: this rank.
        world_size: number of ranks sharing the data.
        seed: shuffling seed (with the epoch number).
        shuffle: permute each epoch; otherwise samples go in order.
        seq_length: truncate samples to this many input positions (None: the dataset's ``seq_length``; it may
            not be longer).
    """

    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 7,
                 shuffle: bool = True, seq_length: int | None = None):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"bad loader settings: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if len(dataset) < 1:
            raise InputError("the dataset has no samples")
        if seq_length is not None and not 0 < seq_length <= dataset.seq_length:
            raise InputError(f"seq_length {seq_length} must be between 1 and the dataset's {dataset.seq_length} "
                             "(samples can be truncated, not lengthened)")
        self.seq_length = seq_length or dataset.seq_length
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0
        self._order: tuple[int, np.ndarray] | None = None
        self._noiser = noiser_of(getattr(dataset, "meta", {}))
        self._masking = None if self._noiser is not None else self._masking_of(dataset)

    @staticmethod
    def _masking_of(dataset) -> tuple | None:
        """``(mask id, special ids, continuation flags or None, span or None)`` of a dataset whose samples the
        loader masks (its options name a mask token: bert, mlm), read once; None for the others."""
        options = getattr(dataset, "meta", {}).get("options", {})
        if "mask" not in options:
            return None
        continuation = None
        if "continuation" in options:  # whole-word masking
            continuation = np.zeros(dataset.meta["vocab_size"], np.bool_)
            continuation[options["continuation"]] = True
        span = (float(options["span"][0]), int(options["span"][1])) if "span" in options else None
        return options["mask"], (options["cls"], options["sep"], dataset.pad_id), continuation, span

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch on each rank (the last global batch is completed by wrapping around)."""
        return -(-len(self.dataset) // self.global_batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` for every rank: (batches_per_epoch * world_size * batch_size,)."""
        n = len(self.dataset)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return np.resize(perm, self.batches_per_epoch * self.global_batch_size)  # resize repeats from the start

    def rank_indices(self, epoch: int, index: int) -> np.ndarray:
        """The samples of batch ``index`` of ``epoch`` on this rank: (batch_size,)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        start = index * self.global_batch_size + self.rank * self.batch_size
        return self._order[1][start:start + self.batch_size]

    def collate(self, indices: np.ndarray, epoch: int, index: int) -> Batch:
        """Build the batch of the given samples (each truncated to ``self.seq_length + 1`` tokens)."""
        if self._noiser is not None:  # t5 and bart samples: corrupted here
            return self.collate_seq2seq(indices, epoch, index)
        if self._masking is not None:  # bert and mlm samples: masked here
            return self.collate_pairs(indices, epoch, index)
        seq_length = self.seq_length
        tokens = np.empty((len(indices), seq_length + 1), dtype=np.int64)
        tgt_mask = np.ones((len(indices), seq_length), dtype=np.bool_)
        real = 0
        for row, i in enumerate(indices):
            sample, mask = self.dataset[int(i)]
            tokens[row] = sample[:seq_length + 1]
            if mask is not None:
                tgt_mask[row] = mask[:seq_length]
            real += min(self.dataset.length(int(i)), seq_length)
        src = torch.from_numpy(tokens[:, :-1].copy())  # (B, seq_length)
        tgt = torch.from_numpy(np.where(tgt_mask, tokens[:, 1:], IGNORE_INDEX))  # (B, seq_length)
        return Batch(src=src, tgt=tgt, tokens=real, epoch=epoch, index=index)

    def collate_pairs(self, indices: np.ndarray, epoch: int, index: int) -> Batch:
        """A bert batch: ``src`` masked (``data/bert.py``: ``mask_tokens``, seeded by (seed, epoch, sample)),
        ``seg`` 1 and 2 for the two segments and 0 at padding, ``tgt_mlm`` and ``tgt_sp``; an mlm batch (full
        sentences, no pairs): ``src`` masked alike, ``seg`` 1 over the real tokens, ``tgt_mlm``."""
        from tencentpretrain.data.bert import mask_tokens

        seq_length, (mask_id, specials, continuation, span) = self.seq_length, self._masking
        rows = len(indices)
        src = np.empty((rows, seq_length), np.int64)
        tgt = np.empty((rows, seq_length), np.int64)
        seg = np.zeros((rows, seq_length), np.int64)
        labels = np.empty(rows, np.int64)
        pairs = self.dataset.seg_start is not None
        real = 0
        for row, i in enumerate(indices):
            i = int(i)
            tokens, length = self.dataset[i][0][:seq_length], min(self.dataset.length(i), seq_length)
            rng = np.random.default_rng([self.seed, epoch, i])
            src[row], tgt[row] = mask_tokens(tokens, length, rng, mask_id, self.dataset.meta["vocab_size"],
                                             specials, continuation, span)
            start = min(int(self.dataset.seg_start[i]), length) if pairs else length
            seg[row, :start], seg[row, start:length] = 1, 2
            labels[row] = int(self.dataset.labels[i]) if pairs else 0
            real += length
        return Batch(src=torch.from_numpy(src), tgt=None, tokens=real, epoch=epoch, index=index,
                     seg=torch.from_numpy(seg), tgt_mlm=torch.from_numpy(tgt),
                     tgt_sp=torch.from_numpy(labels) if pairs else None)

    def collate_seq2seq(self, indices: np.ndarray, epoch: int, index: int) -> Batch:
        """A t5 or bart batch (``data/seq2seq.py``): each sample corrupted by the dataset's noiser with a generator
        seeded by (seed, epoch, sample), then ``src``/``seg`` and ``tgt_in``/``tgt_seg``/``tgt``."""
        noiser, flags = self._noiser, getattr(self.dataset, "sentence_start", None)
        room, pairs = noiser.raw_length(self.seq_length), []
        for i in map(int, indices):
            length = min(self.dataset.length(i), room)
            start = int(self.dataset.offsets[i]) if flags is not None else 0
            starts = None if flags is None else np.asarray(flags[start:start + length])
            rng = np.random.default_rng([self.seed, epoch, i])
            pairs.append(noiser.pair(self.dataset[i][0][:length], starts, rng))
        tensors = collate_pairs(pairs, self.seq_length, noiser.tgt_seq_length, self.dataset.pad_id, noiser.start)
        return Batch(tokens=int(tensors["seg"].sum()), epoch=epoch, index=index, **tensors)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch, index = self.epoch, self.index
            batch = self.collate(self.rank_indices(epoch, index), epoch, index)
            self.index += 1
            if self.index == self.batches_per_epoch:
                self.epoch, self.index = self.epoch + 1, 0
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from, and the settings that must match to resume."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size, "world_size": self.world_size, "samples": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume so that the next batch is the one that would have come after ``state`` was taken."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "batch_size", "world_size", "samples"):
            if state.get(key) != mine[key]:
                raise InputError(f"cannot resume the data loader: {key} was {state.get(key)!r}, now {mine[key]!r}")
        if not 0 <= state["index"] < self.batches_per_epoch or state["epoch"] < 0:
            raise InputError(f"cannot resume the data loader: position {state['epoch']}/{state['index']} is invalid")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
