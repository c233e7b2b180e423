"""Reading corpora as a stream of numbered records, and turning raw records into text fields.

The parent process reads the file and hands out chunks of ``(line_no, payload)`` records; the workers
decode and validate the payloads (:func:`decode_text`, :func:`parse_json`, :func:`field`) so that the
expensive part runs in parallel. A payload is the raw ``bytes`` of one line (``text`` and ``jsonl``
formats) or an already parsed JSON value (``json``: the elements of a top-level array, which the parent
parses with a streaming decoder). Nothing holds more than one chunk of the corpus in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from tencentpretrain.errors import InputError

FORMATS = ("text", "jsonl", "json", "documents")  # documents: lines of sentences, blank lines between documents
Record = tuple[int, Any]  # (1-based line number, payload)


class CorpusError(InputError):
    """Bad input that stops preprocessing; the message names the file and line."""


class RecordError(InputError):
    """One bad record (raised in workers, reported with its line number or skipped by ``--skip_invalid``)."""


def first_char(path: str | Path) -> str:
    """The first non-whitespace byte of ``path`` as a character ('' for an empty or blank file)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            stripped = block.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


def resolve_format(path: str | Path, requested: str, allowed: tuple[str, ...]) -> str:
    """The corpus format: ``requested`` unless it is ``auto``, then guessed from the file.

    ``auto`` picks ``json`` when the file starts with ``[`` (a JSON array), ``jsonl`` when it starts with
    ``{`` and is named ``*.json``/``*.jsonl``, and ``text`` otherwise; the first allowed format wins
    when the guess is not allowed.
    """
    if Path(path).is_dir():
        raise CorpusError(f"{path}: is a directory, expected a corpus file")
    if not Path(path).is_file():
        raise CorpusError(f"{path}: corpus not found")
    if requested != "auto":
        if requested not in allowed:
            raise CorpusError(f"{path}: format {requested!r} is not readable here; use one of {', '.join(allowed)}")
        return requested
    start = first_char(path)
    if start == "[":
        guess = "json"
    elif start == "{" and Path(path).suffix in (".json", ".jsonl"):
        guess = "jsonl"
    else:
        guess = "text"
    return guess if guess in allowed else allowed[0]


def read_chunks(path: str | Path, fmt: str, chunk_size: int) -> Iterator[list[Record]]:
    """Stream ``path`` as lists of at most ``chunk_size`` records, in file order."""
    readers = {"json": iter_json_array, "documents": iter_documents}
    records = readers.get(fmt, iter_lines)(path)
    while chunk := list(islice(records, chunk_size)):
        yield chunk


def iter_lines(path: str | Path) -> Iterator[Record]:
    """Each line of ``path`` as ``(line_no, raw bytes)``; decoding happens in the workers."""
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def iter_documents(path: str | Path) -> Iterator[Record]:
    """Each document of ``path`` as ``(first line_no, [raw lines])``: documents are runs of non-blank lines (one
    sentence a line, BERT's corpus format), separated by blank lines. Chunks therefore never split a document."""
    lines, first = [], 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                first = first or line_no
                lines.append(raw)
            elif lines:
                yield first, lines
                lines, first = [], 0
    if lines:
        yield first, lines


def decode_text(raw: bytes) -> str:
    """A raw line as text, without its line break."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise RecordError(f"invalid UTF-8 at byte {err.start} of the line") from None


def parse_json(payload: Any) -> Any:
    """The JSON value of a record: parsed from a raw ``jsonl`` line, or the array element as it is."""
    if not isinstance(payload, bytes):
        return payload
    text = decode_text(payload)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"malformed JSON: {err.msg} at column {err.colno}") from None


def field(record: Any, key: str, required: bool = True) -> str:
    """The string at ``record[key]``; a missing optional key or JSON null reads as ''."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        if required:
            raise RecordError(f"missing key {key!r} (keys: {', '.join(map(repr, record)) or 'none'})")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"key {key!r} must be a string, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # a JSON escape of half a surrogate pair, e.g. "\ud800"
            raise RecordError(f"key {key!r} holds an unpaired surrogate {value[err.start]!a}, not text") from None
    return value


def iter_json_array(path: str | Path, block_size: int = 1 << 20) -> Iterator[Record]:
    """The elements of a top-level JSON array as ``(line_no, value)``, decoded block by block.

    A malformed array cannot be resynchronised, so any JSON or UTF-8 error here is a :class:`CorpusError`
    naming the line (``--skip_invalid`` only skips well-formed elements with bad content).
    """
    with open(path, encoding="utf-8") as f:
        try:
            yield from _ArrayReader(f, str(path), block_size).elements()
        except UnicodeDecodeError:
            raise CorpusError(f"{path}:{first_invalid_utf8_line(path)}: invalid UTF-8") from None


def first_invalid_utf8_line(path: str | Path) -> int:
    """The 1-based number of the first line of ``path`` that is not valid UTF-8 (0 if none)."""
    for line_no, raw in iter_lines(path):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return line_no
    return 0


class _ArrayReader:
    """Incremental ``[ value, value, ... ]`` reader over a text stream, tracking line numbers."""

    def __init__(self, stream, path: str, block_size: int):
        self.stream, self.path, self.block_size = stream, path, block_size
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.line_pos = 1, 0  # line number at buf[line_pos]

    def elements(self) -> Iterator[Record]:
        if self._next_char() != "[":
            self._fail("expected a JSON array starting with '['")
        self.pos += 1
        count = 0
        while (char := self._next_char()) != "]":
            if count:
                if char != ",":
                    self._fail("expected ',' or ']' between array elements")
                self.pos += 1
                self._next_char()
            yield self._line_at(self.pos), self._decode()
            count += 1
        self.pos += 1
        if self._next_char() != "":
            self._fail("unexpected text after the JSON array")

    def _decode(self) -> Any:
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._fill():
                    continue
                self._fail(f"malformed JSON: {err.msg}", err.pos)
            if end < len(self.buf) or not self._fill():  # a number cut at the block end needs more text
                self.pos = end
                return value

    def _next_char(self) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def _fill(self) -> bool:
        """Append the next block (dropping consumed text); False at the end of the file."""
        if self.eof:
            return False
        if self.pos > self.block_size:
            self._line_at(self.pos)
            self.buf, self.pos, self.line_pos = self.buf[self.pos:], 0, 0
        block = self.stream.read(self.block_size)
        self.eof = not block
        self.buf += block
        return not self.eof

    def _line_at(self, pos: int) -> int:
        self.line += self.buf.count("\n", self.line_pos, pos)
        self.line_pos = pos
        return self.line

    def _fail(self, message: str, pos: int | None = None) -> None:
        raise CorpusError(f"{self.path}:{self._line_at(self.pos if pos is None else pos)}: {message}")
