"""Reading a JSON file with an error that names the file and, for bad JSON, the line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception] = ValueError, missing: str | None = None) -> Any:
    """Parse the JSON file at ``path``.

    Args:
        path: the file.
        error: the exception class raised for a missing, unreadable or invalid file.
        missing: the message for a missing file (default: "<path>: file not found").
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected a JSON file")
    try:
        raw = path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise error(missing or f"{path}: file not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 at line {line_of(raw, err.start)}") from None
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
