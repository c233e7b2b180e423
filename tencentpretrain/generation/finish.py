"""When a row of generated tokens ends, and why: the one rule the engine's text streams and the batcher share."""

from __future__ import annotations

from collections.abc import Callable, Collection

STOP, LENGTH = "stop", "length"  # the finish reasons of a row that ended by itself (OpenAI's names)


def finish_reason(token: int, produced: int, max_tokens: int, eos_ids: Collection[int],
                  accept: Callable[[int], bool]) -> str | None:
    """Why a row ends at its ``produced``-th new token ``token`` (None: it goes on).

    Args:
        token: the token just chosen.
        produced: the row's new tokens so far, ``token`` included (an eos counts).
        max_tokens: the most new tokens of the row.
        eos_ids: the tokens that end a row; they are not handed to ``accept``.
        accept: the consumer, handed every other token; False ends the row (e.g. a stop string appeared).

    Returns:
        ``"stop"`` for an eos or a token the consumer refused, ``"length"`` when ``produced`` reaches
        ``max_tokens``, else None.
    """
    if token in eos_ids or not accept(token):
        return STOP
    return LENGTH if produced >= max_tokens else None


def prompt_budget(seq_length: int, max_tokens: int) -> int:
    """The most prompt tokens that leave room for ``max_tokens`` new ones in a context of ``seq_length``."""
    return seq_length - max_tokens
