"""T5's tokenizer (SentencePiece + 100 sentinels) against transformers' T5Tokenizer on a tiny model trained here."""

import random

import pytest

from tencentpretrain.tokenizers import SentencePieceTokenizer, T5Tokenizer, open_tokenizer, sentinel_ids

WORDS = "the cat dog walks in park sat on mat a big small red blue house tree runs jumps over lazy fox".split()
TEXTS = ["the cat walks in the park", "The <extra_id_0> walks in <extra_id_1> park", "<extra_id_0>cat<extra_id_99> dog",
         "a  b", "x <extra_id_100> y", "12 <extra_id_3>", "cat.\n dog\tfox  ", "Ünïcode ｆｕｌｌ", ""]
DECODED = ["the cat walks in the park", "the <extra_id_0> walks in <extra_id_1> park",
           "<extra_id_0>cat<extra_id_99> dog"]


@pytest.fixture(scope="module")
def t5_spm(tmp_path_factory):
    """A 60-piece unigram model laid out as T5's: pad 0, eos 1, unk 2, no bos (NFKC normalisation, the default)."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("t5_spm")
    rng = random.Random(0)
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(500)),
                                       encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"),
                                             vocab_size=50, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                             bos_id=-1, minloglevel=2)
    return folder / "spiece.model"


@pytest.mark.parametrize("name", ["T5Tokenizer", "T5TokenizerFast"])
def test_ids_equal_transformers(t5_spm, name):
    import transformers

    theirs = getattr(transformers, name).from_pretrained(str(t5_spm.parent))
    ours = open_tokenizer(t5_spm)
    assert isinstance(ours, T5Tokenizer) and ours.vocab_size == len(theirs) == 150
    assert ours.special_tokens == {"bos": None, "eos": theirs.eos_token_id, "pad": theirs.pad_token_id,
                                   "unk": theirs.unk_token_id} == {"bos": None, "eos": 1, "pad": 0, "unk": 2}
    assert sentinel_ids(ours) == theirs.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert sentinel_ids(ours)[0] == 149 and sentinel_ids(ours)[-1] == 50  # <extra_id_0> last, then decreasing
    for text in TEXTS:
        assert ours.encode(text) + [ours.eos_id] == theirs(text).input_ids, text
    assert ours.encode_batch(TEXTS) == [ours.encode(text) for text in TEXTS]
    assert [ours.id_to_piece(i) for i in range(150)] == theirs.convert_ids_to_tokens(list(range(150)))
    for text in DECODED:  # no unknown piece: our unk is SentencePiece's \u2047, theirs "<unk>"
        ids = ours.encode(text)
        assert ours.decode(ids) == theirs.decode(ids), text


def test_a_hugging_face_t5_directory_has_the_same_ids(t5_spm, tmp_path):
    import transformers

    transformers.T5Tokenizer.from_pretrained(str(t5_spm.parent)).save_pretrained(str(tmp_path / "hf"))
    theirs, ours = open_tokenizer(tokenizer_path=tmp_path / "hf"), open_tokenizer(t5_spm)
    assert type(theirs).__name__ == "HuggingFaceTokenizer" and sentinel_ids(theirs) == sentinel_ids(ours)
    assert theirs.special_tokens == ours.special_tokens
    assert [theirs.encode(text) for text in TEXTS] == [ours.encode(text) for text in TEXTS]


def test_sentinels_as_special_tokens_and_other_models_untouched(t5_spm, tiny_spm):
    ours = T5Tokenizer(t5_spm, {"pad": "<extra_id_5>"})
    assert ours.pad_id == 144
    assert type(open_tokenizer(tiny_spm)) is SentencePieceTokenizer  # LLaMA's layout: no sentinels appended
    assert sentinel_ids(open_tokenizer(tiny_spm)) == []


def test_t5_data_with_t5s_tokenizer(t5_spm, tmp_path):
    from train_support import load_script

    from tencentpretrain.data import BinaryDataset, DataLoader

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS[(d + k) % len(WORDS)] for k in range(20)) for d in range(40)) + "\n",
                      encoding="utf-8")
    preprocess = load_script("preprocess").main
    preprocess(["--corpus_path", str(corpus), "--spm_model_path", str(t5_spm), "--dataset_path", str(tmp_path / "d"),
                "--data_processor", "t5", "--seq_length", "32"])
    dataset = BinaryDataset(tmp_path / "d")
    assert dataset.meta["tokenizer"] == "t5" and dataset.meta["vocab_size"] == 150
    batch = next(iter(DataLoader(dataset, 2, seed=0)))
    tokenizer = open_tokenizer(t5_spm)
    labels = batch.tgt[0][batch.tgt_seg[0] == 1].tolist()
    assert labels[-1] == tokenizer.eos_id and tokenizer.decode(labels).startswith("<extra_id_0> ")
    assert (batch.tgt_in[:, 0] == 0).all() and (batch.tgt[:, 0] == 149).all()
