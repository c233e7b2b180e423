"""The prompt files of ``inference/run_llama.py`` and ``inference/run_llama_cpp.py``: one prompt per line, a literal
backslash-n standing for a newline and a doubled backslash for a backslash; their prediction files use the same
escapes, one generated text per line."""

from __future__ import annotations

import re
from pathlib import Path

from tencentpretrain.cli import naming
from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_text


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; a literal backslash-n is a newline and a doubled backslash a backslash.

    Raises:
        InputError: naming ``--test_path`` and the line, when the file is not UTF-8.
    """
    with naming("--test_path", path):
        lines = read_text(path, InputError, "a prompt file").splitlines()
    return [re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", line) for line in lines]


def escape(text: str) -> str:
    """The inverse of ``read_prompts``' unescaping: one line per text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")
