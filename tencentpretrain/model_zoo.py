"""The model zoo: the JSON configs of ``models/`` (and the DeepSpeed configs beside them), found from a source
checkout and from an installed package alike.

``models/`` stays at the repository root, where users type ``--config_path models/llama/7b_config.json``; the
package ships the same files as its data ``tencentpretrain/zoo/`` (``setup.py``), so ``--type 7B`` works after a
plain ``pip install`` too.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT_ZOO = Path(__file__).resolve().parents[1] / "models"
INSTALLED_ZOO = Path(__file__).resolve().parent / "zoo"


def zoo_dir() -> Path:
    """The installed package's copy (``tencentpretrain/zoo/``, which only an installed wheel has), else the source
    checkout's ``models/`` (a clone run in place or installed editable)."""
    return INSTALLED_ZOO if INSTALLED_ZOO.is_dir() else CHECKOUT_ZOO


def zoo_path(*parts: str) -> Path:
    """A file of the zoo, e.g. ``zoo_path("llama", "7b_config.json")`` (it may not exist: the caller names it)."""
    return zoo_dir().joinpath(*parts)
