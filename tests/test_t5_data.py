"""The t5 data processor and the loader's span corruption, on hand-made samples with a fixed seed."""

import numpy as np
import pytest

from tencentpretrain.data.processors import ProcessorSpec
from tencentpretrain.data.t5 import SpanCorruption, T5Processor, noise_bounds, random_spans_noise_mask
from tencentpretrain.targets import IGNORE_INDEX

PAD, EOS, UNK = 0, 1, 2
SENTINELS = list(range(999, 989, -1))  # <extra_id_0> is the last id, then decreasing (T5Tokenizer)


class WordIds:
    """A stand-in T5 tokenizer: each word ``wN`` is the id N; pad 0, eos 1, no bos; ten sentinels."""

    bos_id, eos_id, pad_id, unk_id = None, EOS, PAD, UNK
    sentinel_ids = SENTINELS
    vocab_size = 1000

    def encode_batch(self, lines):
        return [[int(word[1:]) for word in line.split()] for line in lines]


def spec(seq_length=16, noise=(0.15, 3.0), span=None, tgt_seq_length=None, tail="drop"):
    return ProcessorSpec("t5", "t5", "unused", (), seq_length, "text", tail=tail, noise=noise, span=span,
                         tgt_seq_length=tgt_seq_length)


def corruption(processor):
    return SpanCorruption(processor.options())


def fill_in(source, labels):
    """The original tokens back from a source and its labels: each sentinel replaced by its span."""
    spans, current = {}, None
    for token in labels[:-1].tolist():
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    return [t for token in source[:-1].tolist() for t in (spans[token] if token in SENTINELS else [token])]


@pytest.mark.parametrize("tail", ["drop", "pad"])
def test_documents_end_with_eos_and_are_cut_every_seq_length_minus_one(tail):
    docs = [" ".join(f"w{100 * d + w}" for w in range(5 + 3 * d)) for d in range(4)]
    processor = T5Processor(spec(tail=tail), WordIds())
    encoded = processor.encode([(n + 1, doc.encode()) for n, doc in enumerate(docs)])
    expected = [t for d in range(4) for t in (*(100 * d + w for w in range(5 + 3 * d)), EOS)]
    assert encoded.tokens.tolist() == expected and encoded.documents == 4  # 6 + 9 + 12 + 15 = 42 tokens, no bos
    assert processor.pack(len(expected)).tolist() == [0, 15, 30] + ([42] if tail == "pad" else [])


def test_the_source_keeps_the_text_around_one_sentinel_a_span_in_order():
    processor = T5Processor(spec(seq_length=40), WordIds())
    noiser, tokens = corruption(processor), np.arange(100, 139)
    for seed in range(200):
        source, labels = noiser.pair(tokens, None, np.random.default_rng(seed))
        assert source[-1] == EOS and labels[-1] == EOS
        sentinels = [t for t in source.tolist() if t in SENTINELS]
        assert sentinels == SENTINELS[:len(sentinels)] == [t for t in labels.tolist() if t in SENTINELS]
        assert labels[0] == SENTINELS[0] and source[0] == tokens[0]  # T5's mask starts with kept tokens
        assert fill_in(source, labels) == tokens.tolist()
        assert len(source) <= 40 and len(labels) <= processor.tgt_seq_length == noise_bounds(processor.spec)[1]
        gaps = np.diff(np.flatnonzero(np.isin(source, SENTINELS)))
        assert (gaps > 1).all()  # two spans always have kept text between them


def test_noise_density_and_span_count_are_t5s():
    """T5's counts are exact: round(n * density) tokens in round(noise / mean) spans, whatever the draw; over
    10,000 draws every position but the first (always kept) is noise sometimes."""
    n, ever = 57, np.zeros(57, np.int64)
    for seed in range(10_000):
        mask = random_spans_noise_mask(n, 0.15, 3.0, np.random.default_rng([7, 0, seed]))
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert mask.sum() == round(57 * 0.15) == 9 and starts.sum() == 3 and mask[-1] and not mask[0]
        ever += mask
    assert ever[0] == 0 and (ever[1:] > 0).all()
    middle = ever[20:37] / 10_000  # away from the ends, a position is noise with about the density
    sigma = (0.15 * 0.85 / 10_000) ** 0.5
    assert abs(middle.mean() - 0.15) < 3 * sigma + 0.02, middle.mean()


def test_specials_are_never_corrupted_and_a_span_stops_before_one():
    processor = T5Processor(spec(seq_length=40), WordIds())
    noiser = corruption(processor)
    tokens = np.array([*range(100, 112), EOS, *range(200, 213), EOS, *range(300, 312)])
    noise_total = 0
    for seed in range(10_000):
        rng = np.random.default_rng([7, 0, seed])
        source, labels = noiser.pair(tokens, None, rng)
        assert source.tolist().count(EOS) == 3 and labels.tolist().count(EOS) == 1  # both eos kept, one added
        assert fill_in(source, labels) == tokens.tolist()
        noise_total += len(labels) - 1 - sum(t in SENTINELS for t in labels.tolist())
    share = noise_total / (10_000 * len(tokens))
    assert 0.10 < share <= 0.15  # spans cut at the two eos: a little below the density, never above


def test_tencentpretrain_span_masking_corrupts_its_budget():
    processor = T5Processor(spec(seq_length=41, span=(0.3, 5)), WordIds())
    noiser, tokens = corruption(processor), np.arange(100, 140)
    for seed in range(300):
        source, labels = noiser.pair(tokens, None, np.random.default_rng(seed))
        noise = len(labels) - 1 - sum(t in SENTINELS for t in labels.tolist())
        assert 1 <= noise <= round(40 * 0.15) and fill_in(source, labels) == tokens.tolist()
        assert len(labels) <= processor.tgt_seq_length == 2 * 6 + 1


def test_bad_settings_are_refused_naming_the_option():
    class NoSentinels(WordIds):
        sentinel_ids = ()

    with pytest.raises(Exception, match="needs a tokenizer with an eos token and T5's sentinels"):
        T5Processor(spec(), NoSentinels())
    with pytest.raises(Exception, match="--tgt_seq_length 3 is too short: .* need 4"):
        T5Processor(spec(seq_length=16, tgt_seq_length=3), WordIds())  # 15 tokens: 2 noise, 1 span, eos
    with pytest.raises(Exception, match="--seq_length 400 makes up to 20 noise spans, more than the 10 sentinels"):
        T5Processor(spec(seq_length=400), WordIds())
    with pytest.raises(Exception, match="--noise_density 1.5 must be between 0 and 1"):
        T5Processor(spec(noise=(1.5, 3.0)), WordIds())


def vocab(tmp_path, sentinels=10):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij",
             *(f"<extra_id_{i}>" for i in range(sentinels))]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("".join(" ".join("abcdefghij"[(d + k) % 10] for k in range(3 + d % 7)) + "\n"
                                            for d in range(60)), encoding="utf-8")
    return ["--corpus_path", str(tmp_path / "c.txt"), "--vocab_path", str(tmp_path / "vocab.txt"),
            "--data_processor", "t5", "--seq_length", "24"]


def test_preprocess_and_the_loader_give_the_batch_contract(tmp_path):
    from train_support import load_script

    from tencentpretrain.cli import run_cli
    from tencentpretrain.data import BinaryDataset, DataLoader

    preprocess = load_script("preprocess").main
    assert run_cli(preprocess, [*vocab(tmp_path), "--dataset_path", str(tmp_path / "d")]) == 0
    dataset = BinaryDataset(tmp_path / "d")
    options = dataset.meta["options"]
    assert options["sentinels"] == list(range(15, 25)) and options["decoder_start"] == 0  # TencentPretrain's order
    batch = next(iter(DataLoader(dataset, 4, seed=3)))
    assert batch.src.shape == (4, 24) and batch.tgt_in.shape == batch.tgt.shape == (4, options["tgt_seq_length"])
    assert ((batch.src != 0) == (batch.seg == 1)).all() and batch.tokens == int(batch.seg.sum())
    real = batch.tgt_seg == 1
    assert (batch.tgt[~real] == IGNORE_INDEX).all() and (batch.tgt[real] != IGNORE_INDEX).all()
    shifted = real[:, 1:]
    assert (batch.tgt_in[:, 0] == 0).all() and (batch.tgt_in[:, 1:][shifted] == batch.tgt[:, :-1][shifted]).all()
    assert (batch.tgt[:, 0] == 15).all() and set(batch.inputs()) == {"src", "tgt", "seg", "tgt_in", "tgt_seg"}
    loader = DataLoader(dataset, 4, seed=3)
    loader.load_state_dict({**loader.state_dict(), "epoch": 1, "index": 1})
    resumed = next(iter(loader))
    stream = iter(DataLoader(dataset, 4, seed=3))
    for _ in range(loader.batches_per_epoch + 2):  # epoch 1, batch 1
        uninterrupted = next(stream)
    assert all((resumed.inputs()[k] == uninterrupted.inputs()[k]).all() for k in resumed.inputs())
    first = next(iter(DataLoader(dataset, 4, seed=3)))
    assert (first.src == batch.src).all() and not (next(iter(DataLoader(dataset, 4, seed=4))).src == batch.src).all()


def test_preprocess_refuses_a_vocabulary_without_sentinels_and_a_short_target(tmp_path):
    from train_support import load_script

    from tencentpretrain.cli import run_cli

    preprocess = load_script("preprocess").main
    argv = vocab(tmp_path, sentinels=0)
    with pytest.raises(Exception, match="sentinels"):
        preprocess([*argv, "--dataset_path", str(tmp_path / "d")])
    argv = vocab(tmp_path)
    with pytest.raises(Exception, match="--tgt_seq_length 3 is too short"):
        preprocess([*argv, "--dataset_path", str(tmp_path / "d"), "--tgt_seq_length", "3"])
    with pytest.raises(Exception, match="--noise_density is for --data_processor t5, not lm"):
        preprocess([*argv[:-4], "--data_processor", "lm", "--noise_density", "0.2", "--dataset_path", "x"])
    assert run_cli(preprocess, [*argv, "--dataset_path", str(tmp_path / "d"), "--span_masking"]) == 0
    assert not (tmp_path / "x").exists()
