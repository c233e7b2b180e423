"""Freezing parameters by name pattern (``--freeze_patterns``), and the pattern syntax LoRA's options share.

Name patterns are globs over dotted names: ``*`` matches any run of characters, dots included, ``?`` one character,
and a pattern must cover whole dot-separated components. A pattern matches a name when it matches any contiguous
run of the name's components, so it selects a module together with everything inside it:

- ``"self_attn.linear_layers.0"`` matches every layer's query projection ``encoder.transformer.{i}.self_attn.
  linear_layers.0`` (and, for parameters, its ``.weight`` and ``.bias``);
- ``"linear_layers.*"`` matches the query, key and value projections; ``"self_attn"`` also ``final_linear``;
- ``"feed_forward"`` or ``"feed_forward.*"`` match the linears of every feed-forward block;
- ``"transformer.1"`` matches layer 1 but not layers 10 or 11; ``"embedding.*"`` the embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from tencentpretrain.errors import InputError


class PatternError(InputError):
    """A name pattern that matches nothing (most likely a typo); the message lists names that exist."""


def _pattern_regex(pattern: str) -> re.Pattern:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(rf"(?:.*\.)?{body}(?:\..*)?", re.DOTALL)


def name_matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` selects the module or parameter ``name`` (see the module docstring for the rule)."""
    return _pattern_regex(pattern).fullmatch(name) is not None


def check_patterns(patterns: Iterable[str], names: Sequence[str], what: str,
                   error: type[PatternError] = PatternError) -> None:
    """Raise ``error`` for every pattern that matches none of ``names`` (``what`` says whose patterns they are)."""
    unmatched = [p for p in patterns if not any(name_matches(p, n) for n in names)]
    if unmatched:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise error(f"{what} pattern(s) {unmatched} match nothing; known names include: {shown}")


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad = False`` on every parameter matching one of ``patterns``.

    Returns:
        The names of the frozen parameters.

    Raises:
        PatternError: when a pattern matches no parameter.
    """
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    check_patterns(patterns, names, "freeze")
    frozen = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if any(name_matches(p, name) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
