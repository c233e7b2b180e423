"""One small registry, used as a decorator, and the registries of every named part.

Each registry is the only list of names for its kind: command-line choices, config validation,
docs and tests all read ``REGISTRY.names()``. Entries are added by explicit imports in each
package's ``__init__.py`` (never by scanning folders), once, at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A name -> object table that refuses duplicates and explains unknown names.

    Args:
        kind: what the entries are ("encoder", "norm", ...), used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise KeyError(f"duplicate {self.kind} name {name!r}: already registered as {self._entries[name]!r}")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Return the entry called ``name``; a KeyError lists the known names when there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


EMBEDDINGS = Registry("embedding")
ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")
TARGETS = Registry("target")
NORMS = Registry("layernorm")
FEED_FORWARDS = Registry("feed_forward")
ACTIVATIONS = Registry("hidden_act")
DATA_PROCESSORS = Registry("data_processor")
TOKENIZERS = Registry("tokenizer")
TEMPLATES = Registry("template")
SCHEDULERS = Registry("scheduler")
ROPE_SCALINGS = Registry("rope_scaling")  # the rope_type values of the rope_scaling key
