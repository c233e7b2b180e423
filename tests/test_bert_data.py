"""The bert data processor and the loader's masking, on hand-made documents with a fixed seed."""

from collections import Counter

import numpy as np
import pytest

from tencentpretrain.data.bert import BertProcessor, mask_tokens, trim_pair
from tencentpretrain.data.corpus import iter_documents
from tencentpretrain.data.processors import ProcessorSpec
from tencentpretrain.targets import IGNORE_INDEX

CLS, SEP, MASK, PAD = 101, 102, 103, 0


class WordIds:
    """A stand-in tokenizer: each word ``wN`` is the id N (so a sample's words can be read back)."""

    cls_id, sep_id, mask_id, pad_id = CLS, SEP, MASK, PAD

    def encode_batch(self, lines):
        return [[int(word[1:]) for word in line.split()] for line in lines]


def spec(seq_length=32, seed=7):
    return ProcessorSpec("bert", "bert", "unused", (), seq_length, "documents", seed=seed)


def documents(path, docs):
    path.write_text("\n\n".join("\n".join(" ".join(f"w{i}" for i in sentence) for sentence in doc) for doc in docs)
                    + "\n", encoding="utf-8")
    return list(iter_documents(path))


def samples(encoded):
    ends = np.cumsum(encoded.lengths)
    return [encoded.tokens[end - n:end].tolist() for n, end in zip(encoded.lengths, ends)]


def test_documents_are_runs_of_lines_between_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"a b\nc\n\n\nd\n  \ne f\ng\n")
    assert [(line, [raw.strip() for raw in lines]) for line, lines in iter_documents(path)] == [
        (1, [b"a b", b"c"]), (5, [b"d"]), (7, [b"e f", b"g"])]


def test_pairs_layout_segments_and_labels(tmp_path):
    # Two documents of numbered sentences: 1xxx words in the first, 2xxx in the second.
    docs = [[[1000 + 10 * s + w for w in range(4)] for s in range(8)], [[2000 + 10 * s + w for w in range(4)]
                                                                          for s in range(8)]]
    records = documents(tmp_path / "c.txt", docs)
    encoded = BertProcessor(spec(), WordIds()).encode(records)
    assert len(encoded.lengths) == len(encoded.seg_start) == len(encoded.labels) > 2
    for sample, start, label in zip(samples(encoded), encoded.seg_start, encoded.labels):
        assert len(sample) <= 32 and sample[0] == CLS and sample[-1] == SEP and sample[start - 1] == SEP
        a, b = sample[1:start - 1], sample[start:-1]
        assert a and b and SEP not in a + b and CLS not in a + b
        same = {w // 1000 for w in a} == {w // 1000 for w in b}
        if label == 0:  # B follows A in the same document
            assert same and max(a) < min(b)
    assert set(encoded.labels.tolist()) == {0, 1}
    again = BertProcessor(spec(), WordIds()).encode(records)  # the seed fixes every choice
    assert samples(again) == samples(encoded)
    other = BertProcessor(spec(seed=8), WordIds()).encode(records)
    assert samples(other) != samples(encoded)


def test_long_sentences_are_trimmed_to_fit():
    rng = np.random.default_rng(0)
    a, b = list(range(40)), list(range(100, 110))
    assert trim_pair(a, b, 20, rng) and len(a) + len(b) == 20 and len(b) == 10
    assert a == sorted(a) and a[-1] - a[0] == 9  # a contiguous run, cut at both ends
    assert not trim_pair([1], [2], 5, rng)


def test_a_tokenizer_without_mask_token_is_refused():
    class Plain:
        cls_id, sep_id, mask_id = 1, 2, None

    with pytest.raises(Exception, match="needs a tokenizer with .* no mask"):
        BertProcessor(spec(), Plain())


def test_masking_never_chooses_specials_and_keeps_80_10_10():
    tokens = np.array([CLS] + list(range(1000, 1060)) + [SEP] + list(range(2000, 2030)) + [SEP] + [PAD] * 8)
    length = len(tokens) - 8
    kinds, chosen_total = Counter(), 0
    draws = 10_000
    for sample in range(draws):
        src, tgt = mask_tokens(tokens, length, np.random.default_rng([7, 0, sample]), MASK, 5000, (CLS, SEP, PAD))
        chosen = np.flatnonzero(tgt != IGNORE_INDEX)
        assert len(chosen) == round(90 * 0.15) and not np.isin(tokens[chosen], (CLS, SEP, PAD)).any()
        assert (src[tgt == IGNORE_INDEX] == tokens[tgt == IGNORE_INDEX]).all()  # nothing else changes
        assert (tgt[chosen] == tokens[chosen]).all()
        kinds.update(np.where(src[chosen] == MASK, "mask", np.where(src[chosen] == tokens[chosen], "keep",
                                                                     "random")).tolist())
        chosen_total += len(chosen)
    for kind, share in (("mask", 0.8), ("random", 0.1), ("keep", 0.1)):
        sigma = (share * (1 - share) / chosen_total) ** 0.5
        # a random replacement can draw the original token (1 in 5000): counted as keep
        assert abs(kinds[kind] / chosen_total - share) < 3 * sigma + 1e-3, (kind, kinds)
    same = mask_tokens(tokens, length, np.random.default_rng([7, 0, 5]), MASK, 5000, (CLS, SEP, PAD))
    again = mask_tokens(tokens, length, np.random.default_rng([7, 0, 5]), MASK, 5000, (CLS, SEP, PAD))
    assert all((x == y).all() for x, y in zip(same, again))  # (seed, epoch, sample) decides: resume is exact


@pytest.mark.parametrize("tail", ["drop", "pad"])
def test_mlm_packs_full_sentences_cut_every_seq_length(tail):
    from tencentpretrain.data.bert import MlmProcessor

    class Tokenizer(WordIds):
        bos_id, eos_id = 1, 2  # not what mlm wraps with: [CLS] and [SEP] are

    docs = [" ".join(f"w{1000 * d + w}" for w in range(5 + 3 * d)) for d in range(6)]
    records = [(n + 1, doc.encode()) for n, doc in enumerate(docs)]
    processor = MlmProcessor(ProcessorSpec("mlm", "bert", "unused", (), 16, "text", tail=tail), Tokenizer())
    encoded = processor.encode(records)
    expected = [t for d in range(6) for t in (CLS, *(1000 * d + w for w in range(5 + 3 * d)), SEP)]
    assert encoded.tokens.tolist() == expected and encoded.documents == 6  # 7 + 10 + ... + 22 = 87 tokens
    offsets = processor.pack(len(expected)).tolist()
    assert offsets == ([0, 16, 32, 48, 64, 80] + ([87] if tail == "pad" else []))
    with pytest.raises(Exception, match="needs a tokenizer with"):
        MlmProcessor(ProcessorSpec("mlm", "bert", "unused", (), 16, "text"), type("NoMask", (WordIds,),
                                                                               {"mask_id": None})())


def test_whole_word_masking_takes_every_piece_of_a_chosen_word():
    from tencentpretrain.data.bert import mask_tokens

    rng = np.random.default_rng(0)
    vocab = 200
    continuation = np.zeros(vocab, np.bool_)
    continuation[150:] = True  # ids 150-199 are "##" pieces
    tokens = np.full(48, PAD, np.int64)
    words = [[int(rng.integers(10, 150))] + [int(i) for i in rng.integers(150, 200, int(rng.integers(0, 3)))]
             for _ in range(12)]
    body = [t for w in words for t in w]
    sample = [CLS, *body[:len(body) // 2], SEP, *body[len(body) // 2:], SEP]
    tokens[:len(sample)] = sample
    specials = (CLS, SEP, PAD)
    budget = max(1, round(len(body) * 0.15))
    longest = max(len(w) for w in words)
    ever = set()
    for seed in range(300):
        src, tgt = mask_tokens(tokens, len(sample), np.random.default_rng(seed), MASK, vocab, specials, continuation)
        chosen = np.flatnonzero(tgt != IGNORE_INDEX)
        assert 1 <= len(chosen) <= max(budget, longest)  # past the budget only for a lone first word
        assert not np.isin(tokens[chosen], specials).any()
        ever |= set(chosen.tolist())
        for k in chosen:  # a chosen continuation piece's word start is chosen; a chosen word's pieces all are
            if continuation[tokens[k]] and tokens[k - 1] not in specials:
                assert k - 1 in chosen
            if k + 1 < len(sample) and continuation[tokens[k + 1]]:
                assert k + 1 in chosen
        assert np.array_equal(tgt[chosen], tokens[chosen])
    assert ever == set(np.flatnonzero(~np.isin(tokens[:len(sample)], specials)).tolist())  # every word drawn


def test_whole_word_masking_in_preprocess_and_the_loader(tmp_path):
    import json

    from train_support import load_script

    from tencentpretrain.cli import run_cli
    from tencentpretrain.data import BinaryDataset, DataLoader

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "##ed", "run", "##s", "cat", "dog", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("playing cats run . dogs played running .\n" * 40, encoding="utf-8")
    preprocess = load_script("preprocess").main
    argv = ["--corpus_path", str(tmp_path / "c.txt"), "--vocab_path", str(tmp_path / "vocab.txt"), "--dataset_path",
            str(tmp_path / "d"), "--data_processor", "mlm", "--seq_length", "16", "--whole_word_masking"]
    assert run_cli(preprocess, argv) == 0
    dataset = BinaryDataset(tmp_path / "d")
    assert dataset.meta["options"]["continuation"] == [6, 7, 9]
    continuation = {6, 7, 9}
    for batch in (next(iter(DataLoader(dataset, 8, seed=s))) for s in range(5)):
        for row in range(8):
            chosen = set(np.flatnonzero(batch.tgt_mlm[row].numpy() != IGNORE_INDEX).tolist())
            original = batch.tgt_mlm[row].numpy()
            for k in chosen:
                if original[k] in continuation and k > 0:
                    assert k - 1 in chosen  # never a "##" piece without the piece before it
    lm = ["--corpus_path", str(tmp_path / "c.txt"), "--vocab_path", str(tmp_path / "vocab.txt"), "--dataset_path",
          str(tmp_path / "lm"), "--data_processor", "lm", "--seq_length", "16", "--whole_word_masking"]
    assert run_cli(preprocess, lm) != 0
    assert not (tmp_path / "lm").exists()
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["data_processor"] == "mlm"


def test_continuation_ids_of_a_sentencepiece_vocabulary(tiny_spm):
    from tencentpretrain.data.bert import continuation_ids
    from tencentpretrain.tokenizers import open_tokenizer

    tokenizer = open_tokenizer(tiny_spm)
    ids = set(continuation_ids(tokenizer))
    pieces = {i: tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)}
    assert ids and all(not pieces[i].startswith("\u2581") for i in ids)
    assert not ids & set(tokenizer.special_tokens.values())
    assert not any(pieces[i].startswith("<0x") for i in ids)  # byte pieces are left out
    starts = {i for i, piece in pieces.items() if piece.startswith("\u2581")}
    assert starts and not ids & starts


def test_span_masking_chooses_runs_within_the_budget_and_never_crosses_a_special():
    from tencentpretrain.data.bert import mask_tokens, spans_of

    tokens = np.full(64, PAD, np.int64)
    sample = [CLS, *range(10, 40), SEP, *range(40, 70), SEP]
    tokens[:len(sample)] = sample
    specials = (CLS, SEP, PAD)
    candidates = np.flatnonzero(~np.isin(tokens[:len(sample)], specials))
    lengths = Counter()
    for seed in range(400):
        spans = spans_of(candidates, np.random.default_rng(seed), 0.2, 10)
        assert np.array_equal(np.concatenate(spans), candidates)  # they cut the candidates, in order
        for span in spans:
            assert 1 <= len(span) <= 10 and (np.diff(span) == 1).all()  # contiguous: never across a [SEP]
        lengths.update(len(span) for span in spans[:-1])
    assert lengths[1] > lengths[2] > lengths[4] > lengths[8] > 0  # geometric
    budget, masked, total = round(60 * 0.15), 0, 0
    for seed in range(400):
        src, tgt = mask_tokens(tokens, len(sample), np.random.default_rng(seed), MASK, 200, specials, span=(0.2, 10))
        chosen = np.flatnonzero(tgt != IGNORE_INDEX)
        assert 1 <= len(chosen) <= budget and not np.isin(tokens[chosen], specials).any()
        assert np.array_equal(tgt[chosen], tokens[chosen])
        masked, total = masked + int((src[chosen] == MASK).sum()), total + len(chosen)
    assert 0.7 < masked / total < 0.9  # 80% [MASK], decided per span


def test_span_masking_flags_reach_the_loader(tmp_path):
    from train_support import load_script

    from tencentpretrain.cli import run_cli
    from tencentpretrain.data import BinaryDataset, DataLoader

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("a b c d e a b c d e a b c d e a b c d e .\n" * 20, encoding="utf-8")
    argv = ["--corpus_path", str(tmp_path / "c.txt"), "--vocab_path", str(tmp_path / "vocab.txt"),
            "--dataset_path", str(tmp_path / "d"), "--data_processor", "mlm", "--seq_length", "32"]
    preprocess = load_script("preprocess").main
    assert run_cli(preprocess, [*argv, "--span_masking", "--span_geo_prob", "0.3", "--span_max_length", "4"]) == 0
    dataset = BinaryDataset(tmp_path / "d")
    assert dataset.meta["options"]["span"] == [0.3, 4]
    batch = next(iter(DataLoader(dataset, 4, seed=1)))
    counts = (batch.tgt_mlm != IGNORE_INDEX).sum(1)
    assert ((counts >= 1) & (counts <= 5)).all()  # 15% of at most 30 real tokens in 32
    both = [*argv[:5], str(tmp_path / "e"), *argv[6:], "--span_masking", "--whole_word_masking"]
    assert run_cli(preprocess, both) != 0 and not (tmp_path / "e").exists()
