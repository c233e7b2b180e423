"""preprocess.py end to end on small corpora: exact sample layout, masks, formats, determinism, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from conftest import generated_lines

from tencentpretrain.cli import run_cli
from tencentpretrain.data import BinaryDataset
from tencentpretrain.registry import TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS, PAD = 1, 2, 3


def load_preprocess():
    spec = importlib.util.spec_from_file_location("preprocess", ROOT / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PREPROCESS = load_preprocess()


def preprocess(corpus: Path, spm: Path, out: Path, *extra: str) -> dict:
    return PREPROCESS.main(["--corpus_path", str(corpus), "--spm_model_path", str(spm), "--dataset_path", str(out),
                            "--chunk_size", "3", *extra])


def failing(capsys, *args) -> str:
    """Run preprocess through run_cli expecting exit status 1; the error message."""
    assert run_cli(lambda _argv: preprocess(*args), []) == 1
    return capsys.readouterr().err


@pytest.fixture
def sp(tiny_spm):
    return sentencepiece.SentencePieceProcessor(model_file=str(tiny_spm))


@pytest.fixture
def docs(tmp_path) -> tuple[Path, list[str]]:
    lines = generated_lines(40, seed=1)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, lines


def stored(ds: BinaryDataset) -> list[list[int]]:
    return [ds[i][0][:ds.length(i)].tolist() for i in range(len(ds))]


@pytest.mark.parametrize("tail", ["drop", "pad"])
def test_lm_packs_documents_in_bos_eos_and_cuts_every_seq_length_plus_one(tmp_path, tiny_spm, sp, docs, tail):
    corpus, lines = docs
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--seq_length", "16", "--tail", tail)
    stream = [t for line in lines for t in [BOS, *sp.encode(line.strip()), EOS]]
    full = len(stream) // 17
    ds = BinaryDataset(tmp_path / "ds")
    expected = [stream[i * 17:(i + 1) * 17] for i in range(full)]
    if tail == "pad":
        expected.append(stream[full * 17:])
        assert 2 <= len(expected[-1]) < 17
    assert stored(ds) == expected
    assert report["counts"]["documents"] == 40 and report["counts"]["samples"] == len(expected)
    assert report["counts"]["tokens"] == sum(map(len, expected))
    assert ds.meta["special_tokens"] == {"bos": BOS, "eos": EOS, "pad": PAD, "unk": 0}
    tokens, mask = ds[0]
    assert tokens.dtype == np.int64 and tokens.shape == (17,) and mask is None
    if tail == "pad":
        tokens, mask = ds[-1]
        real = len(expected[-1])
        assert (tokens[real:] == PAD).all() and mask.dtype == np.bool_ and mask.shape == (16,)
        assert mask.tolist() == [True] * (real - 1) + [False] * (17 - real)


def test_lm_jsonl_text_field_gives_the_same_tokens(tmp_path, tiny_spm, docs):
    corpus, lines = docs
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": line, "id": i}) + "\n" for i, line in enumerate(lines)))
    preprocess(corpus, tiny_spm, tmp_path / "a", "--seq_length", "16")
    preprocess(jsonl, tiny_spm, tmp_path / "b", "--seq_length", "16")
    assert (tmp_path / "a" / "tokens.bin").read_bytes() == (tmp_path / "b" / "tokens.bin").read_bytes()
    assert BinaryDataset(tmp_path / "b").meta["corpus_format"] == "jsonl"


def test_lm_blank_lines_are_left_out_and_counted(tmp_path, tiny_spm):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the model\n\n   \nthe data\n")
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--seq_length", "4", "--tail", "pad")
    assert report["counts"]["documents"] == 2 and report["counts"]["empty"] == 2


@pytest.mark.parametrize("processor,suffix", [("lm", "txt"), ("alpaca", "json")])
def test_output_is_byte_identical_whatever_processes_num(tmp_path, tiny_spm, processor, suffix):
    lines = generated_lines(200, seed=2)
    corpus = tmp_path / f"corpus.{suffix}"
    if processor == "lm":
        corpus.write_text("\n".join(lines))
    else:
        corpus.write_text(json.dumps([{"instruction": a, "input": "", "output": b} for a, b in zip(lines, lines[1:])]))
    for n in (1, 2):
        preprocess(corpus, tiny_spm, tmp_path / f"p{n}", "--data_processor", processor, "--processes_num", str(n),
                   "--seq_length", "32")
    files = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "p2").iterdir()) and "meta.json" in files
    for name in files:
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes(), name


def alpaca_records() -> list[dict]:
    return [
        {"instruction": "train the model", "input": "", "output": "the loss"},
        {"instruction": "answer\\nthe question", "input": "数据 文本", "output": "回答 the\\nresponse"},
        {"instruction": "predict", "output": "the next one"},  # input missing is fine
    ]


def test_alpaca_masks_exactly_the_prompt_and_keeps_response_and_eos(tmp_path, tiny_spm, sp):
    corpus = tmp_path / "sft.json"
    corpus.write_text(json.dumps(alpaca_records(), ensure_ascii=False, indent=1))
    preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "alpaca", "--seq_length", "512")
    ds = BinaryDataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.meta["counts"]["truncated"] == 0
    for i, record in enumerate(alpaca_records()):
        unescape = [record.get(k, "").replace("\\n", "\n") for k in ("instruction", "input", "output")]
        prompt = sp.encode(TEMPLATES.get("alpaca").render(unescape[0], unescape[1]))
        response = sp.encode(unescape[2])
        tokens, mask = ds[i]
        real = 1 + len(prompt) + len(response) + 1
        assert tokens[:real].tolist() == [BOS, *prompt, *response, EOS]
        assert (tokens[real:] == PAD).all()
        targets = tokens[1:][mask].tolist()
        assert targets == [*response, EOS]
        assert not mask[:len(prompt)].any() and mask[len(prompt):real - 1].all() and not mask[real - 1:].any()
    assert "answer\nthe question" in sp.decode(ds[1][0][:ds.length(1)].tolist())


def test_alpaca_json_array_and_jsonl_give_the_same_dataset(tmp_path, tiny_spm):
    array, jsonl = tmp_path / "a.json", tmp_path / "b.jsonl"
    array.write_text(json.dumps(alpaca_records(), indent=2))
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in alpaca_records()))
    for path, out in ((array, "a"), (jsonl, "b")):
        preprocess(path, tiny_spm, tmp_path / out, "--data_processor", "alpaca", "--seq_length", "64")
    for name in ("tokens.bin", "index.bin", "loss_start.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_alpaca_truncation_keeps_prompt_end_response_start_and_eos(tmp_path, tiny_spm, sp):
    long = " ".join(generated_lines(30, seed=3))
    record = {"instruction": long, "input": "", "output": long}
    corpus = tmp_path / "sft.jsonl"
    corpus.write_text(json.dumps(record) + "\n" + json.dumps(alpaca_records()[0]) + "\n")
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", "alpaca", "--seq_length", "40",
                        "--template", "none")
    assert report["counts"]["truncated"] == 1
    ds = BinaryDataset(tmp_path / "ds")
    tokens, mask = ds[0]
    prompt, response = sp.encode(long), sp.encode(long)
    assert len(prompt) > 40
    assert ds.length(0) == 41 and tokens[0] == BOS and tokens[40] == EOS
    assert tokens[1:20].tolist() == prompt[-19:]  # the prompt keeps room // 2 = 19 tokens, its end
    assert tokens[20:40].tolist() == response[:20]
    assert mask.sum() == 21 and mask[19:].all()


def test_special_tokens_from_flags_and_json_file(tmp_path, tiny_spm, docs):
    corpus, _ = docs
    tokens = tmp_path / "special.json"
    tokens.write_text(json.dumps({"pad_token": "<unk>", "bos": 2}))
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--special_tokens_path", str(tokens), "--eos_token", "1")
    assert report["special_tokens"] == {"bos": 2, "eos": 1, "pad": 0, "unk": 0}
    assert BinaryDataset(tmp_path / "ds")[0][0][0] == 2


BAD_RECORDS = [
    ("lm", "c.jsonl", b'{"text": "the model"}\n{"text": "the data"\n{"text": "ok"}\n', 2, "malformed JSON", 2),
    ("lm", "c.jsonl", b'{"text": "the model"}\n{"txt": "the data"}\n', 2, "missing key 'text'", 1),
    ("lm", "c.txt", b"the model\nthe \xff data\nthe loss\n", 2, "invalid UTF-8", 2),
    ("alpaca", "c.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', 2, "missing key 'output'", 1),
    ("alpaca", "c.json", b'[{"instruction": "a", "output": "b"},\n 7,\n {"instruction": "c", "output": "d"}]', 2,
     "expected a JSON object", 2),
]


@pytest.mark.parametrize("processor,name,content,line,message,good", BAD_RECORDS)
def test_bad_record_names_file_and_line_and_leaves_no_dataset(tmp_path, tiny_spm, capsys, processor, name, content,
                                                              line, message, good):
    corpus = tmp_path / name
    corpus.write_bytes(content)
    err = failing(capsys, corpus, tiny_spm, tmp_path / "ds", "--data_processor", processor, "--seq_length", "4",
                  "--tail", "pad")
    assert f"{corpus}:{line}: " in err and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no dataset, no temp dir left
    report = preprocess(corpus, tiny_spm, tmp_path / "ds", "--data_processor", processor, "--seq_length", "4",
                        "--tail", "pad", "--skip_invalid")
    assert report["counts"]["skipped"] == 1 and report["counts"]["documents"] == good
    assert f"{corpus}:{line}" in capsys.readouterr().err


@pytest.mark.parametrize("content,line", [(b'[{"a": "b"},\n{"a": }]', 2), (b'[{"a": "b"},\n{"a": "\xff"}]', 2),
                                          (b'[{"a": "b"}\n{"a": "c"}]', 2), (b'{"a": "b"}', 1)])
def test_malformed_json_array_is_fatal_even_with_skip_invalid(tmp_path, tiny_spm, capsys, content, line):
    corpus = tmp_path / "c.json"
    corpus.write_bytes(content)
    err = failing(capsys, corpus, tiny_spm, tmp_path / "ds", "--data_processor", "alpaca", "--corpus_format", "json",
                  "--skip_invalid")
    assert f"{corpus}:{line}: " in err and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_corpus_fails(tmp_path, tiny_spm, capsys, content):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    assert "empty corpus" in failing(capsys, corpus, tiny_spm, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_corpus_too_short_for_one_sample_suggests_tail_pad(tmp_path, tiny_spm, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the model\n")
    assert "--tail pad" in failing(capsys, corpus, tiny_spm, tmp_path / "ds", "--seq_length", "64")


def test_existing_dataset_is_refused_unless_overwrite(tmp_path, tiny_spm, capsys, docs):
    corpus, _ = docs
    out = tmp_path / "ds"
    preprocess(corpus, tiny_spm, out, "--seq_length", "8")
    before = (out / "tokens.bin").read_bytes()
    assert "--overwrite" in failing(capsys, corpus, tiny_spm, out, "--seq_length", "16")
    assert (out / "tokens.bin").read_bytes() == before
    preprocess(corpus, tiny_spm, out, "--seq_length", "16", "--overwrite")
    assert BinaryDataset(out).seq_length == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "ds"]


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, tiny_spm, capsys, docs):
    corpus, _ = docs
    out = tmp_path / "ds"
    preprocess(corpus, tiny_spm, out, "--seq_length", "8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"oops": 1}\n')
    failing(capsys, bad, tiny_spm, out, "--overwrite", "--seq_length", "8")
    assert BinaryDataset(out).seq_length == 8
