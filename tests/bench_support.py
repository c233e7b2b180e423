"""Importing a benchmark of bench/ (a package beside tencentpretrain/), for the tests that run them on tiny sizes."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_bench(name: str) -> ModuleType:
    """The module ``bench.<name>`` (``bench/<name>.py``), as ``python -m bench.<name>`` runs it."""
    return importlib.import_module(f"bench.{name}")
