"""BERT's WordPiece tokenizer (``--tokenizer bert``) against transformers' BertTokenizer (Python, "legacy" in
transformers 5) and BertTokenizerFast (Rust) built from the same vocab.txt, cased and uncased; decoding; bad
vocabularies named by file and line; which tokenizer the command-line flags open; the cls/sep/mask ids every
tokenizer gives."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from train_support import load_script

from tencentpretrain.cli import run_cli
from tencentpretrain.data import BinaryDataset
from tencentpretrain.tokenizers import (
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    WordPieceTokenizer,
    open_tokenizer,
    tokenizer_in,
    tokenizer_source,
)

transformers = pytest.importorskip("transformers")
from transformers import BertTokenizerFast  # noqa: E402
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused2]"]
WORDS = ["the", "The", "a", "is", "hello", "Hello", "world", "World", "un", "##aff", "##able", "run", "##ning",
         "##s", "##ed", "play", "##ing", "don", "t", "s", "I", "i", "m", "re", "ve", "café", "cafe", "naive", "naïve",
         "resume", "résumé", "Zürich", "zurich", "über", "uber", "straße", "strasse", "x", "##x", "123", "##4", "4",
         "CJK", "mixed", "##ly", "new", "york", "New", "York", "Москва", "москва", "привет", "αβγ", "ΑΒΓ",
         "中", "国", "人", "文", "字", "日", "本", "##本", "한", "##국", "の", "は", "カ", "##タ"]
PUNCT = list(".,!?;:'\"()[]{}<>-_/\\@#$%^&*+=~`|") + ["。", "，", "、", "「", "」", "…", "—", "¿", "¡", "«", "»", "§"]
TEXTS = [
    "Hello, world!", "hello world", "The running plays", "unaffable", "UNAFFABLE Unaffable", "I'm don't we've re",
    "New York's café, naïve résumé; Zürich über STRASSE straße", "CAFÉ Café cafe\u0301 (decomposed)",
    "中国人 mixed中文字CJK日本", "日本の字は カタカナ 한국", "Москва привет ΑΒΓ αβγ", "x" * 100, "x" * 101,
    "##x x##x", "hello" * 21, "zzz unknownword hello", "   lots \t of\n\n white\r\nspace\u00a0\u3000here  ",
    "ctrl\x00char\x01s \ufffd\u200b\u200dzero width \x7f\x9f", "[CLS] hello [SEP] world [SEP]", "hello[MASK]world",
    "[MASK][MASK] [PAD] [UNK]", "[cls] [mask] [unused0] [Mask]", "¿Qué? ¡Sí! «quoted» 1,234.5 $4 50% a+b=c",
    "emoji 😀 and symbols © ™ ≈ ½", "tab\tsep\tvalues", "", " ", "\n", "... --- !!! ???", "e-mail: a@b.com http://x.y/z",
    "1234 12344 4123", "The The the THE", "a\u0300 \u00e0 o\u0308",
]


def write_vocab(folder: Path, tokens: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    write_vocab(folder, SPECIALS + WORDS + PUNCT)
    return folder


def references(vocab: Path, lowercase: bool):
    return (BertTokenizerLegacy(str(vocab), do_lower_case=lowercase),
            BertTokenizerFast(vocab=str(vocab), do_lower_case=lowercase))


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Words of the vocabulary, pieces glued together, punctuation and unknown characters, in random case."""
    rng = random.Random(seed)
    alphabet = WORDS + PUNCT + [w.removeprefix("##") for w in WORDS] + ["zq", "é", "\u0301", "\t", "  ", "ß", "İ"]
    texts = []
    for _ in range(count):
        parts = [rng.choice(alphabet) for _ in range(rng.randint(1, 12))]
        parts = [p.upper() if rng.random() < 0.2 else p for p in parts]
        texts.append("".join(p + (" " if rng.random() < 0.6 else "") for p in parts))
    return texts


@pytest.mark.parametrize("lowercase", [True, False])
def test_ids_equal_transformers_python_and_rust_bert_tokenizers(vocab_dir, lowercase):
    ours = WordPieceTokenizer(vocab_dir, lowercase=lowercase)
    slow, fast = references(vocab_dir / "vocab.txt", lowercase)
    assert ours.vocab_size == slow.vocab_size == len(SPECIALS + WORDS + PUNCT)
    decomposed = {t for t in TEXTS + random_texts(400) if any(c in t for c in "\u0300\u0301\u0308")}
    for text in TEXTS + random_texts(400):
        ids = ours.encode(text)
        assert ids == slow.encode(text, add_special_tokens=False), text
        if lowercase or text not in decomposed:  # Rust does not NFC-compose first: cased "e\u0301" differs there
            assert ids == fast.encode(text, add_special_tokens=False), text
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]


def test_the_rules_on_hand_made_cases(vocab_dir):
    uncased, cased = WordPieceTokenizer(vocab_dir, lowercase=True), WordPieceTokenizer(vocab_dir, lowercase=False)
    pieces = lambda tokenizer, text: [tokenizer.id_to_piece(i) for i in tokenizer.encode(text)]  # noqa: E731
    assert pieces(uncased, "Unaffable!") == ["un", "##aff", "##able", "!"]
    assert pieces(cased, "Unaffable") == ["[UNK]"]  # no "Un": the whole word is unknown, not a piece of it
    assert pieces(uncased, "CAFÉ naïve") == ["cafe", "naive"]  # accents stripped when lowercasing
    assert pieces(cased, "café naïve") == ["café", "naïve"]
    assert pieces(uncased, "中国x") == ["中", "国", "x"]
    assert pieces(uncased, "x" * 100) == ["x"] + ["##x"] * 99 and pieces(uncased, "x" * 101) == ["[UNK]"]
    assert pieces(uncased, "a\x00b c\ufffd") == ["[UNK]", "[UNK]"]  # "ab" and "c": NUL and U+FFFD dropped
    assert pieces(uncased, "hello[MASK]World [SEP]") == ["hello", "[MASK]", "world", "[SEP]"]
    assert pieces(uncased, "[mask]") == ["[", "[UNK]", "]"]  # a special token is matched as written


@pytest.mark.parametrize("lowercase", [True, False])
def test_decode_as_transformers(vocab_dir, lowercase):
    ours = WordPieceTokenizer(vocab_dir, lowercase=lowercase)
    slow, fast = references(vocab_dir / "vocab.txt", lowercase)
    rng = random.Random(1)
    id_lists = [ours.encode(t) for t in TEXTS] + [[rng.randrange(ours.vocab_size) for _ in range(12)]
                                                   for _ in range(200)]
    for ids in id_lists:
        assert ours.decode(ids) == fast.decode(ids), ids  # transformers 5's default: clean_up_tokenization_spaces off
        assert ours.decode(ids, clean_up_tokenization_spaces=True) == slow.decode(ids), ids
    assert ours.decode(ours.encode("hello, unaffable world!")) == "hello, unaffable world!"
    assert ours.decode(ours.encode("I'm don't")) == "i ' m don ' t" if lowercase else "I ' m don ' t"
    assert ours.decode(ours.encode("don't"), clean_up_tokenization_spaces=True) == "don't"


def test_casing_read_from_tokenizer_config_else_detected(tmp_path):
    cased = write_vocab(tmp_path / "cased", SPECIALS + ["Hello", "hello"])
    uncased = write_vocab(tmp_path / "uncased", SPECIALS + ["hello", "##s", "[unused9]"])
    assert not WordPieceTokenizer(cased).lowercase and WordPieceTokenizer(uncased).lowercase
    (tmp_path / "cased" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert WordPieceTokenizer(cased).lowercase
    assert WordPieceTokenizer(cased).encode("Hello") == [9]


def test_special_tokens_named_by_the_configs(tmp_path):
    folder = tmp_path / "renamed"
    write_vocab(folder, ["<pad>", "<unk>", "<cls>", "<sep>", "hello", "[MASK]"])
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": "<pad>", "unk_token": {"content": "<unk>"}, "cls_token": "<cls>", "sep_token": "<sep>"}))
    tokenizer = WordPieceTokenizer(folder)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == \
        (0, 1, 2, 3, 5)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.end_ids) == (2, 3, (3,))
    assert tokenizer.encode("<cls>hello [UNK]<sep>") == [2, 4, 1, 1, 1, 3]  # "[UNK]" is not special here
    assert WordPieceTokenizer(folder, {"eos": "hello"}).eos_id == 4
    write_vocab(tmp_path / "nomask", ["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    assert WordPieceTokenizer(tmp_path / "nomask").mask_id is None
    write_vocab(tmp_path / "nocls", ["[PAD]", "[UNK]", "[SEP]"])
    with pytest.raises(TokenizerError, match=r"nocls/vocab.txt: no cls token '\[CLS\]'"):
        WordPieceTokenizer(tmp_path / "nocls")
    with pytest.raises(TokenizerError, match="unknown special token 'bogus'"):
        WordPieceTokenizer(folder, {"bogus": 1})


@pytest.mark.parametrize("text, message", [
    ("[PAD]\n[UNK]\n\n[CLS]\n", r"vocab.txt: line 3 is empty"),
    ("[PAD]\n[UNK]\n[CLS]\n[UNK]\n", r"vocab.txt: line 4: token '\[UNK\]' already on line 2"),
    ("", r"vocab.txt: empty vocabulary"),
])
def test_bad_vocab_refused_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "vocab.txt").write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        WordPieceTokenizer(tmp_path / "vocab.txt")


def test_crlf_and_missing_final_newline_accepted(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello")
    tokenizer = WordPieceTokenizer(tmp_path / "vocab.txt")
    assert tokenizer.vocab_size == 5 and tokenizer.encode("hello") == [4]


def test_flags_open_the_tokenizer_the_path_is(tmp_path, vocab_dir):
    hf_dir = tmp_path / "hf"
    BertTokenizerFast(vocab=str(vocab_dir / "vocab.txt"), do_lower_case=True).save_pretrained(hf_dir)
    assert (hf_dir / "tokenizer.json").is_file()
    assert tokenizer_source(None, vocab_dir).name == "bert"
    assert tokenizer_source(None, vocab_dir / "vocab.txt").name == "bert"
    assert tokenizer_source(None, None, vocab_path=vocab_dir / "vocab.txt") == \
        ("bert", str(vocab_dir / "vocab.txt"), "--vocab_path")
    assert tokenizer_source(None, hf_dir).name == "huggingface"
    assert tokenizer_source(None, hf_dir / "tokenizer.json").name == "huggingface"
    assert tokenizer_in(vocab_dir) == (None, vocab_dir)
    assert isinstance(open_tokenizer(tokenizer_path=vocab_dir), WordPieceTokenizer)
    assert isinstance(open_tokenizer(vocab_path=vocab_dir / "vocab.txt"), WordPieceTokenizer)
    with pytest.raises(TokenizerError, match="give one of --tokenizer_path and --vocab_path, not both"):
        open_tokenizer(tokenizer_path=hf_dir, vocab_path=vocab_dir)
    with pytest.raises(TokenizerError, match=r"^--vocab_path .*missing.txt: vocabulary file not found"):
        open_tokenizer(vocab_path=tmp_path / "missing.txt")
    with pytest.raises(TokenizerError, match=r"^--tokenizer_path .*empty: a directory without tokenizer.json"):
        (tmp_path / "empty").mkdir()
        open_tokenizer(tokenizer_path=tmp_path / "empty")
    with pytest.raises(TokenizerError, match=r"^--vocab_path .*tokenizer.json: expected a WordPiece vocab.txt"):
        open_tokenizer(vocab_path=hf_dir / "tokenizer.json")


def test_hugging_face_bert_directory_stays_hugging_face_with_the_same_ids(tmp_path, vocab_dir):
    hf_dir = tmp_path / "hf"
    BertTokenizerFast(vocab=str(vocab_dir / "vocab.txt"), do_lower_case=True).save_pretrained(hf_dir)
    theirs, ours = open_tokenizer(tokenizer_path=hf_dir), WordPieceTokenizer(vocab_dir, lowercase=True)
    assert isinstance(theirs, HuggingFaceTokenizer)
    assert theirs.vocab_size == ours.vocab_size
    for name in ("cls_id", "sep_id", "mask_id", "pad_id", "unk_id", "bos_id", "eos_id"):
        assert getattr(theirs, name) == getattr(ours, name), name
    texts = [t for t in TEXTS + random_texts(200, seed=3) if not any(c in t for c in "\u0300\u0301\u0308")]
    assert theirs.encode_batch(texts) == ours.encode_batch(texts)


def test_cls_sep_mask_of_the_other_tokenizers(tiny_spm, tmp_path):
    spm = SentencePieceTokenizer(tiny_spm)
    assert (spm.cls_id, spm.sep_id, spm.mask_id) == (None, None, None)
    spm = SentencePieceTokenizer(tiny_spm, {"cls": "<s>", "sep": "</s>", "mask": 0})
    assert (spm.cls_id, spm.sep_id, spm.mask_id) == (spm.bos_id, spm.eos_id, 0)
    from tencentpretrain.tokenizers import read_special_tokens

    (tmp_path / "map.json").write_text(json.dumps({"cls_token": "<s>", "sep_token": "</s>", "mask_token": "<unk>"}))
    assert read_special_tokens(tmp_path / "map.json") == {"cls": "<s>", "sep": "</s>", "mask": "<unk>",
                                                          "bos": "<s>", "eos": "</s>"}


def preprocess(*argv: str) -> dict:
    return load_script("preprocess").main(list(argv))


def test_preprocess_with_vocab_path_writes_cls_text_sep(tmp_path, vocab_dir, capsys):
    (tmp_path / "corpus.txt").write_text("Hello world\nunaffable 中国\n", encoding="utf-8")
    preprocess("--corpus_path", str(tmp_path / "corpus.txt"), "--vocab_path", str(vocab_dir / "vocab.txt"),
               "--dataset_path", str(tmp_path / "ds"), "--seq_length", "8", "--tail", "pad")
    tokenizer = WordPieceTokenizer(vocab_dir)
    dataset = BinaryDataset(tmp_path / "ds")
    expected = [tokenizer.cls_id, *tokenizer.encode("Hello world"), tokenizer.sep_id,
                tokenizer.cls_id, *tokenizer.encode("unaffable 中国"), tokenizer.sep_id]
    assert dataset.meta["special_tokens"]["pad"] == tokenizer.pad_id
    assert (dataset.meta["tokenizer"], dataset.meta["tokenizer_fingerprint"]) == ("bert", tokenizer.fingerprint)
    tokens = [int(t) for i in range(len(dataset)) for t in dataset[i][0]]
    assert tokens[:len(expected)] == expected and set(tokens[len(expected):]) == {tokenizer.pad_id}
    argv = ["--corpus_path", str(tmp_path / "corpus.txt"), "--vocab_path", str(tmp_path / "nope.txt"),
            "--dataset_path", str(tmp_path / "x")]
    assert run_cli(load_script("preprocess").main, argv, prog="preprocess.py") == 1
    assert "error: --vocab_path " in capsys.readouterr().err


def test_real_bert_vocab_of_shared_data():
    """A BERT vocab.txt in ../shared/data/tokenizers (none is there today), on the shared corpora."""
    found = sorted(SHARED.glob("tokenizers/*/vocab.txt")) if SHARED.is_dir() else []
    if not found:
        pytest.skip("no BERT vocab.txt in ../shared/data/tokenizers")
    texts = [line for name in ("clue_small_zh.txt", "wiki_demo_en.txt") if (SHARED / "corpora" / name).is_file()
             for line in (SHARED / "corpora" / name).read_text(encoding="utf-8").splitlines()[:100]]
    for vocab in found:
        ours = WordPieceTokenizer(vocab)
        slow = BertTokenizerLegacy(str(vocab), do_lower_case=ours.lowercase)
        assert Counter(map(tuple, ours.encode_batch(texts))) == \
            Counter(tuple(slow.encode(t, add_special_tokens=False)) for t in texts)


def test_train_tokenizer_wordpiece_writes_a_vocab_transformers_reads_as_we_do(tmp_path):
    from transformers import BertTokenizerFast

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The Cat sat on the mat. Café au lait, 数据模型!\nDogs ran to the big house.\n" * 20,
                      encoding="utf-8")
    train = load_script("train_tokenizer", "scripts").main
    assert run_cli(train, ["--model_type", "wordpiece", "--corpus_path", str(corpus), "--model_prefix",
                           str(tmp_path / "bert"), "--vocab_size", "200"]) == 0
    vocab = tmp_path / "bert-vocab.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "##s" in lines and "数" in lines
    ours = WordPieceTokenizer(vocab)
    assert ours.lowercase  # trained uncased: no capital in the vocabulary, so read as uncased
    theirs = BertTokenizerFast(vocab=str(vocab))
    for text in ["The CAT sat on the mat.", "café, 数据 dogs", "unknownword zzz"]:
        assert theirs(text)["input_ids"] == [ours.cls_id, *ours.encode(text), ours.sep_id], text
    assert run_cli(train, ["--model_type", "wordpiece", "--corpus_path", str(tmp_path / "missing.txt"),
                           "--model_prefix", str(tmp_path / "other"), "--vocab_size", "200"]) != 0
    assert not (tmp_path / "other-vocab.txt").exists()
