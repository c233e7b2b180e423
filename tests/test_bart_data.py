"""The bart data processor and the loader's sentence permutation and text infilling, with a fixed seed."""

import math
from collections import Counter

import numpy as np
import pytest

from tencentpretrain.data.bart import BartProcessor, Denoising, infilling_mask, permute_sentences, poisson_spans
from tencentpretrain.data.corpus import iter_documents
from tencentpretrain.data.processors import ProcessorSpec
from tencentpretrain.targets import IGNORE_INDEX

BOS, PAD, EOS, MASK = 0, 1, 2, 3  # BART's ids, and a mask


class WordIds:
    """A stand-in tokenizer: each word ``wN`` is the id N."""

    bos_id, pad_id, eos_id, mask_id = BOS, PAD, EOS, MASK

    def encode_batch(self, lines):
        return [[int(word[1:]) for word in line.split()] for line in lines]


def spec(seq_length=16, noise=(0.3, 3.0), span=None, tgt_seq_length=None):
    return ProcessorSpec("bart", "bert", "unused", (), seq_length, "documents", noise=noise, span=span,
                         tgt_seq_length=tgt_seq_length)


def documents(path, docs):
    path.write_text("\n\n".join("\n".join(" ".join(f"w{i}" for i in sentence) for sentence in doc) for doc in docs)
                    + "\n", encoding="utf-8")
    return list(iter_documents(path))


def test_samples_are_runs_of_whole_sentences_with_their_starts(tmp_path):
    docs = [[list(range(100, 105)), list(range(110, 116)), list(range(120, 124))],
            [list(range(200, 230)), list(range(240, 243))]]
    encoded = BartProcessor(spec(seq_length=16), WordIds()).encode(documents(tmp_path / "c.txt", docs))
    ends = np.cumsum(encoded.lengths)
    samples = [encoded.tokens[end - n:end].tolist() for n, end in zip(encoded.lengths, ends)]
    starts = [np.flatnonzero(encoded.sentence_start[end - n:end]).tolist() for n, end in zip(encoded.lengths, ends)]
    assert samples == [[BOS, *range(100, 105), *range(110, 116), EOS], [BOS, *range(120, 124), EOS],
                       [BOS, *range(200, 214), EOS], [BOS, *range(214, 228), EOS],
                       [BOS, 228, 229, *range(240, 243), EOS]]  # the 30-token sentence cut every 14 tokens
    assert starts == [[1, 6], [1], [1], [1], [1, 3]] and encoded.truncated == 1 and encoded.documents == 2
    assert len(encoded.sentence_start) == len(encoded.tokens)


def test_permutation_is_a_permutation_of_the_sentences():
    sentences = [list(range(10 * k, 10 * k + 1 + k)) for k in range(1, 5)]
    tokens = np.array([BOS, *(t for s in sentences for t in s), EOS])
    flags = np.zeros(len(tokens), np.uint8)
    flags[np.cumsum([1] + [len(s) for s in sentences[:-1]])] = 1
    orders = Counter()
    for seed in range(2400):
        out = permute_sentences(tokens, flags, EOS, np.random.default_rng(seed)).tolist()
        assert out[0] == BOS and out[-1] == EOS and len(out) == len(tokens)
        order = [t // 10 for t in out[1:-1] if t % 10 == 0]
        assert sorted(order) == [1, 2, 3, 4] and out[1:-1] == [t for k in order for t in sentences[k - 1]]
        orders[tuple(order)] += 1
    assert len(orders) == 24  # every order of four sentences, about 100 times each
    assert all(abs(n - 100) < 3 * (100 * 23 / 24) ** 0.5 + 10 for n in orders.values()), orders


def test_infilling_masks_the_ratio_in_poisson_spans():
    draws, count = 10_000, 60
    ever, spans = np.zeros(count), []
    for seed in range(draws):
        mask = infilling_mask(count, 0.3, 3.0, np.random.default_rng([7, 0, seed]))
        assert mask.sum() == 18  # round(0.3 * 60), exactly
        ever += mask
        lengths = poisson_spans(50, 3.0, np.random.default_rng([8, seed]))
        assert lengths.sum() == 50 and (lengths > 0).all()
        spans.append(int(lengths[0]))  # the first: a plain draw (the one reaching the budget is cut, and longer)
    lam = 3.0
    mean = lam / (1 - math.exp(-lam))  # Poisson without zeros
    sigma = ((mean * (1 + lam) - mean ** 2) / len(spans)) ** 0.5
    assert abs(np.mean(spans) - mean) < 3 * sigma, (np.mean(spans), mean)
    middle = ever[15:45] / draws
    assert abs(middle.mean() - 0.3) < 3 * (0.3 * 0.7 / draws) ** 0.5 + 0.02, middle.mean()


def denoiser(seq_length=40, **kwargs):
    processor = BartProcessor(spec(seq_length=seq_length, **kwargs), WordIds())
    return Denoising(processor.options(), 1000)


def test_the_source_has_one_mask_a_span_and_the_labels_are_the_original():
    tokens = np.array([BOS, *range(100, 130), EOS])
    flags = np.zeros(len(tokens), np.uint8)
    flags[1] = 1  # one sentence: nothing to permute
    noiser = denoiser()
    for seed in range(2000):
        source, labels = noiser.pair(tokens, flags, np.random.default_rng(seed))
        assert labels.tolist() == tokens.tolist() and source[0] == BOS and source[-1] == EOS
        kept = [t for t in source.tolist() if t != MASK]
        assert kept == [t for t in tokens.tolist() if t in kept]  # in order: a mask stands in for a span
        masks = source.tolist().count(MASK)
        assert 1 <= masks and len(tokens) - len(kept) == 9  # round(0.3 * 30) masked, bos and eos never
        assert (np.diff(np.flatnonzero(source == MASK)) > 1).all()  # two masks never touch: a run is one mask


def test_tencentpretrain_span_masking_collapses_each_masked_span():
    tokens = np.array([BOS, *range(100, 140), EOS])
    noiser = denoiser(seq_length=42, span=(0.3, 5))
    for seed in range(300):
        source, labels = noiser.pair(tokens, np.eye(1, len(tokens), 1, np.uint8)[0], np.random.default_rng(seed))
        assert (labels == tokens).all() and len(source) <= len(tokens) and source[0] == BOS and source[-1] == EOS
        assert (np.diff(np.flatnonzero(source == MASK)) > 1).all()


def test_bad_settings_are_refused_naming_the_option():
    with pytest.raises(Exception, match="needs a tokenizer with bos, eos and mask .* no mask"):
        BartProcessor(spec(), type("NoMask", (WordIds,), {"mask_id": None})())
    with pytest.raises(Exception, match="--tgt_seq_length 10 is too short: .* need 16"):
        BartProcessor(spec(tgt_seq_length=10), WordIds())
    with pytest.raises(Exception, match="--mask_ratio 0 must be between 0 and 1"):
        BartProcessor(spec(noise=(0, 3.0)), WordIds())
    with pytest.raises(Exception, match="--poisson_lambda -1"):
        BartProcessor(spec(noise=(0.3, -1)), WordIds())


def corpus(tmp_path, mask=True):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *(["[MASK]"] if mask else []), *"abcdefghij"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    docs = ["\n".join(" ".join("abcdefghij"[(d + s + k) % 10] for k in range(2 + (d + s) % 5)) for s in range(4))
            for d in range(30)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return ["--corpus_path", str(tmp_path / "c.txt"), "--vocab_path", str(tmp_path / "vocab.txt"),
            "--data_processor", "bart", "--seq_length", "20"]


def test_preprocess_and_the_loader_give_the_batch_contract(tmp_path):
    from train_support import load_script

    from tencentpretrain.cli import run_cli
    from tencentpretrain.data import BinaryDataset, DataLoader

    preprocess = load_script("preprocess").main
    assert run_cli(preprocess, [*corpus(tmp_path), "--dataset_path", str(tmp_path / "d")]) == 0
    dataset = BinaryDataset(tmp_path / "d")
    assert dataset.sentence_start is not None and dataset.meta["options"]["decoder_start"] == 3  # [SEP]: eos
    loader = DataLoader(dataset, 4, seed=5)
    batch = next(iter(loader))
    assert batch.src.shape == (4, 20) and batch.tgt.shape == batch.tgt_in.shape == (4, 20)
    assert ((batch.src != 0) == (batch.seg == 1)).all() and (batch.src == 4).any()  # [MASK] is 4
    for row, i in enumerate(loader.rank_indices(0, 0)):
        original = dataset[int(i)][0][:dataset.length(int(i))]
        real = batch.tgt_seg[row] == 1
        assert batch.tgt[row][real].tolist() == original.tolist() and (batch.tgt[row][~real] == IGNORE_INDEX).all()
        assert batch.tgt_in[row][real].tolist() == [3, *original[:-1].tolist()]  # </s> <s> text: Hugging Face's
    again = next(iter(DataLoader(dataset, 4, seed=5)))
    assert all((again.inputs()[k] == batch.inputs()[k]).all() for k in batch.inputs())  # (seed, epoch, sample)
    resumed = DataLoader(dataset, 4, seed=5)
    resumed.load_state_dict({**resumed.state_dict(), "epoch": 2, "index": 0})
    stream = iter(DataLoader(dataset, 4, seed=5))
    for _ in range(2 * resumed.batches_per_epoch + 1):
        expected = next(stream)
    assert (next(iter(resumed)).src == expected.src).all()


def test_preprocess_refuses_a_vocabulary_without_mask_and_a_short_target(tmp_path):
    from train_support import load_script

    preprocess = load_script("preprocess").main
    with pytest.raises(Exception, match="no mask"):
        preprocess([*corpus(tmp_path, mask=False), "--dataset_path", str(tmp_path / "d")])
    with pytest.raises(Exception, match="--tgt_seq_length 19 is too short"):
        preprocess([*corpus(tmp_path), "--dataset_path", str(tmp_path / "d"), "--tgt_seq_length", "19"])
    with pytest.raises(Exception, match="--mask_ratio is for --data_processor bart, not t5"):
        preprocess([*corpus(tmp_path)[:-4], "--data_processor", "t5", "--mask_ratio", "0.2", "--seq_length", "20"])
    assert not (tmp_path / "d").exists()
