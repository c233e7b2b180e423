"""Reading evaluation files: documents for perplexity, C-Eval / MMLU CSVs for multiple choice.

Every fault stops with an :class:`EvaluationInputError` naming the file and the 1-based line: a wrong header, a row
with the wrong number of columns, an answer that is not A/B/C/D, invalid UTF-8, a malformed JSON line, an empty file.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from tencentpretrain.data.corpus import RecordError, field, iter_json_array, iter_lines, parse_json, resolve_format
from tencentpretrain.errors import InputError

LETTERS = ("A", "B", "C", "D")
CEVAL_HEADER = ("id", "question", *LETTERS, "answer")  # C-Eval val/dev files; dev adds "explanation"
MMLU_HEADER = ("question", *LETTERS, "answer")  # what each row of a headerless MMLU file holds
SPLITS = ("val", "dev", "test")


class EvaluationInputError(InputError):
    """A malformed evaluation file; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes:
        id: the ``id`` column (C-Eval) or the 0-based row number (headerless MMLU files).
        question: the question text.
        options: the texts of options A, B, C and D.
        answer: the correct letter, or None in a file without answers (C-Eval's test split).
        line: the 1-based line of the file where the row starts.
    """

    id: str
    question: str
    options: tuple[str, str, str, str]
    answer: str | None
    line: int


def read_documents(path: str | Path, corpus_format: str = "auto") -> list[str]:
    """The documents of a corpus, in file order, blank ones left out.

    Args:
        path: a text file (one document a line, stripped of surrounding whitespace: the convention of
            ``preprocess.py``), a JSONL file (the ``text`` field of each line, as it is) or a JSON array of
            ``{"text": ...}`` objects.
        corpus_format: ``text``, ``jsonl``, ``json`` or ``auto`` (guessed as ``preprocess.py`` does).
    """
    try:
        fmt = resolve_format(path, corpus_format, ("text", "jsonl", "json"))
        records = iter_json_array(path) if fmt == "json" else iter_lines(path)
        docs = [_document(payload, fmt, path, line) for line, payload in records]
    except (ValueError, OSError) as err:  # CorpusError (a malformed JSON array), unreadable file
        raise EvaluationInputError(str(err)) from None
    docs = [doc for doc in docs if doc]
    if not docs:
        raise EvaluationInputError(f"{path}: no document (the corpus is empty or blank)")
    return docs


def _document(payload, fmt: str, path, line: int) -> str:
    try:
        if fmt == "text":
            return _decode(payload).strip()
        return field(parse_json(payload), "text")
    except RecordError as err:
        raise EvaluationInputError(f"{path}:{line}: {err}") from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise RecordError(f"invalid UTF-8 at byte {err.start} of the line") from None


def read_choice_file(path: str | Path, need_answers: bool = True) -> list[Question]:
    """The questions of one C-Eval or MMLU CSV file.

    Accepted layouts: a C-Eval header ``id,question,A,B,C,D,answer`` (dev files may add ``explanation``;
    C-Eval's test files have no ``answer``), the same without ``id``, or MMLU's headerless rows
    ``question,A,B,C,D,answer``. A first row containing a ``question`` or ``answer`` cell is a header.

    Args:
        path: the CSV file.
        need_answers: refuse a file without an ``answer`` column (dev files, for the examples).
    """
    path = Path(path)
    rows = _csv_rows(path)
    if not rows:
        raise EvaluationInputError(f"{path}: empty file, no question")
    columns, rows = _columns(path, rows)
    if need_answers and "answer" not in columns:
        raise EvaluationInputError(f"{path}:1: no 'answer' column; the header is {','.join(columns)}")
    questions = []
    for index, (line, cells) in enumerate(rows):
        if len(cells) != len(columns):
            raise EvaluationInputError(f"{path}:{line}: {len(cells)} columns, expected {len(columns)} "
                                       f"({','.join(columns)})")
        questions.append(_question(path, line, dict(zip(columns, cells)), index))
    if not questions:
        raise EvaluationInputError(f"{path}: a header and no question")
    return questions


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank CSV record; quoted fields may span lines."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise EvaluationInputError(f"{path}:{line}: invalid UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, line = [], 1
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as err:
        raise EvaluationInputError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
    return rows


def _columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[tuple[str, ...], list]:
    """The column names and the data rows: from the header, or MMLU's fixed layout when there is none."""
    line, first = rows[0]
    names = tuple(cell.strip() for cell in first)
    if not {"question", "answer"} & {name.lower() for name in names}:
        return MMLU_HEADER, rows
    accepted = (CEVAL_HEADER, CEVAL_HEADER + ("explanation",), CEVAL_HEADER[:-1], MMLU_HEADER)
    if names not in accepted:
        raise EvaluationInputError(f"{path}:{line}: wrong header {','.join(names)}; expected "
                                   f"{','.join(CEVAL_HEADER)} (C-Eval; dev files may add ',explanation', "
                                   "test files may leave out ',answer') or no header (MMLU)")
    return names, rows[1:]


def _question(path: Path, line: int, row: dict[str, str], index: int) -> Question:
    answer = row.get("answer")
    if answer is not None:
        answer = answer.strip().upper()
        if answer not in LETTERS:
            raise EvaluationInputError(f"{path}:{line}: answer {row['answer']!r} is not one of A, B, C, D")
    return Question(id=row.get("id", str(index)).strip(), question=row["question"],
                    options=tuple(row[letter] for letter in LETTERS), answer=answer, line=line)


def subject_of(path: str | Path) -> str:
    """The subject a file is about: its name without the ``_val``/``_dev``/``_test`` split and ``.csv``."""
    stem = Path(path).stem
    return re.sub(rf"_({'|'.join(SPLITS)})$", "", stem)


def subject_files(path: str | Path, flag: str) -> dict[str, Path]:
    """``{subject: csv file}`` for a CSV file or every ``*.csv`` of a directory, sorted by subject.

    Args:
        path: the file or directory.
        flag: the command-line flag that named it, for the error messages.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise EvaluationInputError(f"{flag} {path}: no .csv file in the directory")
    else:
        raise EvaluationInputError(f"{flag} {path}: no such file or directory")
    found: dict[str, Path] = {}
    for file in files:
        subject = subject_of(file)
        if subject in found:
            raise EvaluationInputError(f"{flag} {path}: two files for subject {subject!r}: {found[subject].name} "
                                       f"and {file.name}")
        found[subject] = file
    return dict(sorted(found.items()))
