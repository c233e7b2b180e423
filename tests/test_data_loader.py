"""BinaryDataset (memmap reader, corrupt/missing/wrong-version errors) and the sharded, resumable DataLoader."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from conftest import generated_lines

from tencentpretrain.data import BinaryDataset, DataLoader, DatasetError, ProcessorSpec, build_dataset
from tencentpretrain.targets import IGNORE_INDEX


def make_dataset(path, spm, processor="lm", lines=60, seq_length=12):
    corpus = path.parent / f"{path.name}.corpus"
    texts = generated_lines(lines, seed=4)
    if processor == "lm":
        corpus.write_text("\n".join(texts))
        fmt = "text"
    else:
        corpus.write_text("".join(json.dumps({"instruction": a, "output": b}) + "\n" for a, b in zip(texts, texts)))
        fmt = "jsonl"
    spec = ProcessorSpec(processor=processor, tokenizer="sentencepiece", tokenizer_path=str(spm), special_tokens=(),
                         seq_length=seq_length, corpus_format=fmt, tail="pad", template="none")
    build_dataset(spec, corpus, path, chunk_size=7)
    return BinaryDataset(path)


@pytest.fixture
def lm(tmp_path, tiny_spm) -> BinaryDataset:
    return make_dataset(tmp_path / "lm", tiny_spm)


@pytest.mark.parametrize("batch_size", [3, 4])
def test_two_ranks_cover_every_sample_once_per_epoch_without_overlap(lm, batch_size):
    n, world = len(lm), 2
    loaders = [DataLoader(lm, batch_size, rank=r, world_size=world, seed=11) for r in range(world)]
    per_epoch = loaders[0].batches_per_epoch
    assert per_epoch == -(-n // (batch_size * world))
    seen = [np.concatenate([lo.rank_indices(0, b) for b in range(per_epoch)]) for lo in loaders]
    both = Counter(np.concatenate(seen).tolist())
    assert set(both) == set(range(n))
    assert sum(both.values()) == per_epoch * batch_size * world
    assert sum(c - 1 for c in both.values()) == per_epoch * batch_size * world - n  # the wrapped remainder only
    interleaved = np.concatenate([lo.rank_indices(0, b) for b in range(per_epoch) for lo in loaders])
    assert np.array_equal(interleaved, loaders[0].epoch_order(0))  # ranks take disjoint slices of one order
    assert sorted(interleaved[:n].tolist()) == list(range(n))  # repeats come only from the wrapped remainder
    first, second = loaders[0].epoch_order(0), loaders[0].epoch_order(1)
    assert not np.array_equal(first, second)  # reshuffled with (seed, epoch)


def test_batches_are_shifted_tokens_with_masked_pad(lm):
    loader = DataLoader(lm, 4, shuffle=False)
    batches = list(islice(loader, loader.batches_per_epoch + 1))
    first = batches[0]
    tokens = np.stack([lm[i][0] for i in range(4)])
    assert first.src.dtype == torch.int64 and first.src.shape == (4, lm.seq_length)
    assert first.src.tolist() == tokens[:, :-1].tolist() and first.tgt.tolist() == tokens[:, 1:].tolist()
    assert first.tokens == 4 * lm.seq_length and (first.epoch, first.index) == (0, 0)
    i = len(lm) - 1  # the padded tail sample (no shuffle: order is 0..n-1)
    last, row, real = batches[i // 4], i % 4, lm.length(i)
    assert real < lm.seq_length + 1 and last.src[row].tolist() == lm[i][0][:-1].tolist()
    assert (last.tgt[row, real - 1:] == IGNORE_INDEX).all() and (last.tgt[row, : real - 1] != IGNORE_INDEX).all()
    assert (batches[-1].epoch, batches[-1].index) == (1, 0)


def test_alpaca_batch_ignores_prompt_targets(tmp_path, tiny_spm):
    ds = make_dataset(tmp_path / "sft", tiny_spm, processor="alpaca", lines=8, seq_length=64)
    batch = next(iter(DataLoader(ds, 2, shuffle=False)))
    for row in range(2):
        tokens, mask = ds[row]
        counted = batch.tgt[row][batch.tgt[row] != IGNORE_INDEX].tolist()
        assert counted == tokens[1:][mask].tolist() and counted[-1] == ds.meta["special_tokens"]["eos"]
        assert mask.sum() < ds.length(row) - 1  # the prompt is masked
    assert batch.tokens == min(ds.length(0), 64) + min(ds.length(1), 64)


def test_resume_gives_the_same_next_batches(lm):
    loader = DataLoader(lm, 3, rank=1, world_size=2, seed=5)
    iterator = iter(loader)
    for _ in range(loader.batches_per_epoch + 2):  # cross an epoch boundary
        next(iterator)
    state = loader.state_dict()
    expected = [next(iterator) for _ in range(loader.batches_per_epoch)]
    resumed = DataLoader(lm, 3, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(pickle.loads(pickle.dumps(state)))
    got = list(islice(resumed, loader.batches_per_epoch))
    assert [(b.epoch, b.index) for b in got] == [(b.epoch, b.index) for b in expected]
    assert all(g.src.equal(e.src) and g.tgt.equal(e.tgt) for g, e in zip(got, expected))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(lm, 4, rank=1, world_size=2, seed=5).load_state_dict(state)


def test_dataset_is_memory_mapped_and_picklable(lm):
    assert isinstance(lm.tokens, np.memmap) and isinstance(lm.offsets, np.memmap)
    clone = pickle.loads(pickle.dumps(lm))
    assert all(np.array_equal(clone[i][0], lm[i][0]) for i in range(len(lm)))
    with pytest.raises(IndexError):
        lm[len(lm)]


def test_missing_corrupt_and_wrong_version_datasets_are_refused(lm, tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        BinaryDataset(tmp_path / "nothing")
    meta = json.loads((lm.path / "meta.json").read_text())
    (lm.path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DatasetError, match="version 99"):
        BinaryDataset(lm.path)
    (lm.path / "meta.json").write_text(json.dumps(meta))
    with open(lm.path / "tokens.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DatasetError, match="tokens.bin.*truncated"):
        BinaryDataset(lm.path)


@pytest.mark.parametrize("change, message", [
    ({"seq_length": "12"}, "seq_length must be a positive integer"),
    ({"token_dtype": "float64"}, "token_dtype must be uint16 or uint32"),
    ({"counts": {"samples": -1}}, "counts must hold the number of samples"),
    ({"special_tokens": {"pad": None}}, "special_tokens must hold an integer pad id"),
])
def test_metadata_of_the_wrong_type_is_refused(lm, change, message):
    meta = json.loads((lm.path / "meta.json").read_text())
    (lm.path / "meta.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(DatasetError, match=f"meta.json: {message}"):
        BinaryDataset(lm.path)


def test_index_that_disagrees_with_seq_length_is_refused(lm):
    offsets = np.fromfile(lm.path / "index.bin", dtype=np.uint64)
    offsets[1], offsets[2] = offsets[2], offsets[1]  # same size: sample 0 now too long, sample 1 negative
    offsets.tofile(lm.path / "index.bin")
    with pytest.raises(DatasetError, match=r"index.bin: corrupt index: sample 0 has 26 tokens; .* = 13"):
        BinaryDataset(lm.path)
