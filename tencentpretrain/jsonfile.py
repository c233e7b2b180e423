"""Reading a text or JSON file with an error that names the file and, for bad text or JSON, the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_text(path: str | Path, error: type[Exception] = ValueError, what: str = "a text file") -> str:
    """The UTF-8 text of the file at ``path``.

    Args:
        path: the file.
        error: the exception class raised for a missing, unreadable or non-UTF-8 file (naming the first bad line).
        what: what the file should be, for the message about a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected {what}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 at line {line_of(raw, err.start)}") from None


def read_json(path: str | Path, error: type[Exception] = ValueError, missing: str | None = None) -> Any:
    """Parse the JSON file at ``path``.

    Args:
        path: the file.
        error: the exception class raised for a missing, unreadable or invalid file.
        missing: the message for a missing file (default: "<path>: file not found").
    """
    if missing is not None and not Path(path).exists():
        raise error(missing)
    text = read_text(path, error, "a JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def read_json_object(path: str | Path, error: type[Exception] = ValueError, missing: str | None = None,
                     what: str = "a JSON object") -> dict[str, Any]:
    """Parse the JSON file at ``path`` and insist on an object (``{...}``) at the top.

    Args:
        path: the file.
        error: the exception class raised for a missing, unreadable, invalid or non-object file.
        missing: the message for a missing file (default: "<path>: file not found").
        what: what the file should hold, for the message (e.g. "a model config").
    """
    data = read_json(path, error, missing)
    if not isinstance(data, dict):
        raise error(f"{path}: expected {what} (a JSON object {{...}}), found a JSON {json_type(data)}")
    return data


def line_of(raw: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``raw``."""
    return raw.count(b"\n", 0, offset) + 1


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean or null."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
