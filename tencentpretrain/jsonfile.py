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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing or f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
