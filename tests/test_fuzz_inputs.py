"""Property-based tests: arbitrary bytes and arbitrary JSON never raise anything but the documented error type.

- the corpus reader (``lm`` over text) and the alpaca reader (JSON array and JSONL) through ``build_dataset``:
  either a dataset whose ``skipped`` count is exactly the number of invalid records (computed here independently),
  or a :class:`CorpusError` (empty corpus, no sample, a malformed JSON array);
- the config loader: a :class:`ConfigError` or a valid config.

Derandomised (the same examples on every run) and bounded, so the suite stays fast.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tencentpretrain.config import ConfigError, ModelConfig  # noqa: E402
from tencentpretrain.data import CorpusError, ProcessorSpec, build_dataset  # noqa: E402

FAST = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text, sometimes with half a surrogate pair (valid JSON as "\ud800", but not text; Hypothesis never draws one)
TEXT = st.text(max_size=20) | st.tuples(st.text(max_size=8), st.integers(0xD800, 0xDFFF)).map(
    lambda t: t[0] + chr(t[1]))
JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# records that are sometimes valid alpaca records, sometimes nearly so
ALPACA_VALUES = TEXT | st.none() | st.integers() | st.lists(st.text(max_size=5), max_size=2)
ALPACA_RECORDS = st.dictionaries(st.sampled_from(["instruction", "input", "output", "other"]), ALPACA_VALUES,
                                 max_size=4) | JSON
TEXT_LINES = st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), max_size=12)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def build(folder: Path, spm: Path, data: bytes, processor: str, corpus_format: str, skip_invalid: bool = True):
    """Preprocess ``data`` in this process; returns the dataset's counts."""
    corpus = folder / "corpus"
    corpus.write_bytes(data)
    spec = ProcessorSpec(processor=processor, tokenizer="sentencepiece", tokenizer_path=str(spm), special_tokens=(),
                         seq_length=4, corpus_format=corpus_format, tail="pad")
    report = build_dataset(spec, corpus, folder / "dataset", chunk_size=5, skip_invalid=skip_invalid,
                           overwrite=True, progress=False)
    return report["counts"]


def lines_of(data: bytes) -> list[bytes]:
    """The lines the reader sees: a binary file split after each b'\\n'."""
    return list(io.BytesIO(data))


def utf8(line: bytes) -> str | None:
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


def is_text(value) -> bool:
    return isinstance(value, str) and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def valid_alpaca(record) -> bool:
    """Whether the alpaca processor accepts a parsed record (the rule of docs/dataset_format.md)."""
    return (isinstance(record, dict) and is_text(record.get("instruction")) and is_text(record.get("output"))
            and (record.get("input") is None or is_text(record["input"])))


def valid_jsonl_alpaca(line: bytes) -> bool:
    text = utf8(line)
    if text is None:
        return False
    try:
        return valid_alpaca(json.loads(text))
    except json.JSONDecodeError:
        return False


@FAST
@given(lines=TEXT_LINES)
def test_text_corpus_skips_and_counts_every_undecodable_line(folder, tiny_spm, lines):
    data = b"\n".join(lines)
    decoded = [utf8(line) for line in lines_of(data)]
    invalid = sum(text is None for text in decoded)
    documents = sum(text is not None and bool(text.strip()) for text in decoded)
    try:
        counts = build(folder, tiny_spm, data, "lm", "text")
    except CorpusError as err:
        assert documents == 0 or "no sample" in str(err), err
        return
    assert (counts["skipped"], counts["documents"]) == (invalid, documents)


@FAST
@given(lines=TEXT_LINES)
def test_text_corpus_without_skip_stops_at_the_first_bad_line(folder, tiny_spm, lines):
    data = b"\n".join(lines)
    bad = [n for n, line in enumerate(lines_of(data), start=1) if utf8(line) is None]
    try:
        build(folder, tiny_spm, data, "lm", "text", skip_invalid=False)
    except CorpusError as err:
        if bad:
            assert f"corpus:{bad[0]}:" in str(err), err
        return
    assert not bad


@FAST
@given(records=st.lists(ALPACA_RECORDS, max_size=8))
def test_alpaca_json_array_counts_every_skipped_record(folder, tiny_spm, records):
    valid = sum(map(valid_alpaca, records))
    try:
        counts = build(folder, tiny_spm, json.dumps(records, indent=1).encode(), "alpaca", "json")
    except CorpusError as err:
        assert valid == 0, err
        return
    assert (counts["skipped"], counts["documents"]) == (len(records) - valid, valid)


@FAST
@given(lines=st.lists(ALPACA_RECORDS.map(lambda r: json.dumps(r).encode()) | st.binary(max_size=30), max_size=8))
def test_alpaca_jsonl_counts_every_skipped_record(folder, tiny_spm, lines):
    data = b"\n".join(lines)
    records = lines_of(data)
    valid = sum(map(valid_jsonl_alpaca, records))
    try:
        counts = build(folder, tiny_spm, data, "alpaca", "jsonl")
    except CorpusError as err:
        assert valid == 0, err
        return
    assert (counts["skipped"], counts["documents"]) == (len(records) - valid, valid)


@FAST
@given(lines=st.lists(st.dictionaries(st.sampled_from(["text", "other"]), ALPACA_VALUES, max_size=2).map(
    lambda r: json.dumps(r).encode()) | st.binary(max_size=30), max_size=8))
def test_jsonl_corpus_counts_every_skipped_record(folder, tiny_spm, lines):
    data = b"\n".join(lines)
    texts = [json_text(line) for line in lines_of(data)]
    documents = sum(text is not None and bool(text.strip()) for text in texts)
    try:
        counts = build(folder, tiny_spm, data, "lm", "jsonl")
    except CorpusError as err:
        assert documents == 0 or "no sample" in str(err), err
        return
    assert (counts["skipped"], counts["documents"]) == (sum(text is None for text in texts), documents)


def json_text(line: bytes) -> str | None:
    """The ``text`` of a JSONL line, None when the lm processor must skip it."""
    text = utf8(line)
    try:
        record = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None
    return record["text"] if isinstance(record, dict) and is_text(record.get("text")) else None


@FAST
@given(data=st.binary(max_size=200))
def test_alpaca_reader_on_arbitrary_bytes_raises_only_corpus_errors(folder, tiny_spm, data):
    for corpus_format in ("json", "jsonl"):
        try:
            build(folder, tiny_spm, data, "alpaca", corpus_format)
        except CorpusError:
            pass


CONFIG_KEYS = sorted(f for f in ModelConfig.__dataclass_fields__ if f != "source")
LLAMA = json.loads((Path(__file__).resolve().parents[1] / "models/llama/tiny_config.json").read_text())


def load_config(folder: Path, data: bytes) -> None:
    path = folder / "config.json"
    path.write_bytes(data)
    try:
        ModelConfig.from_json(path)
    except ConfigError as err:
        assert str(path) in str(err)


@FAST
@given(data=st.binary(max_size=100) | JSON.map(lambda v: json.dumps(v).encode()))
def test_config_loader_on_arbitrary_input_raises_only_config_errors(folder, data):
    load_config(folder, data)


@FAST
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON, max_size=3))
def test_config_loader_on_a_real_config_with_arbitrary_values_raises_only_config_errors(folder, changes):
    load_config(folder, json.dumps({**LLAMA, **changes}).encode())
