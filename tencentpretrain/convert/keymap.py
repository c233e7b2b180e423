"""Declarative key maps between checkpoint formats, used in both directions.

A map is ``{their_template: our_template}``; ``{}`` stands for the layer index. ``rename(name, mapping)`` finds the
template a name matches and fills the other side; ``invert(mapping)`` gives the map for the way back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import cache

import torch

from tencentpretrain.errors import InputError

LAYER = "{}"


class ConversionError(InputError):
    """A checkpoint that cannot be converted; the message names the file, key or tensor."""


@cache
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape(LAYER), r"(\d+)") + r"\Z")


def match(name: str, mapping: dict[str, str]) -> tuple[str, str | None] | None:
    """The template ``name`` matches in ``mapping`` and its layer index (None for non-layer keys)."""
    for template in mapping:
        found = _pattern(template).match(name)
        if found:
            return template, (found.group(1) if found.groups() else None)
    return None


def fill(template: str, layer: str | int | None) -> str:
    """Put the layer index into a template."""
    return template.replace(LAYER, str(layer)) if layer is not None else template


def rename(name: str, mapping: dict[str, str]) -> str | None:
    """The other side's name for ``name``, or None when no template matches."""
    found = match(name, mapping)
    if found is None:
        return None
    template, layer = found
    return fill(mapping[template], layer)


def invert(mapping: dict[str, str]) -> dict[str, str]:
    """The map for the opposite direction (a key map must be one-to-one)."""
    inverted = {ours: theirs for theirs, ours in mapping.items()}
    if len(inverted) != len(mapping):
        raise ValueError("key map is not one-to-one")
    return inverted


def renamed(tensors: Iterable[tuple[str, torch.Tensor]], mapping: dict[str, str], where: str,
            ignored: tuple[str, ...] = ()) -> Iterator[tuple[str, str, torch.Tensor]]:
    """``(template, new_name, tensor)`` for each (name, tensor) pair, the template being the one the old name
    matched; names ending with one of ``ignored`` are skipped, any other unknown name raises ConversionError."""
    for name, tensor in tensors:
        if name.endswith(ignored):
            continue
        found = match(name, mapping)
        if found is None:
            raise ConversionError(f"unexpected tensor {name} in {where}")
        template, layer = found
        yield template, fill(mapping[template], layer), tensor
