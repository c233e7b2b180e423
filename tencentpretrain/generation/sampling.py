"""Choosing the next token from logits: greedy, temperature, top-k, top-p and a repetition penalty."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    Attributes:
        temperature: divides the logits; 0 means greedy (argmax), the other settings are then ignored
            except the repetition penalty.
        top_k: keep only the k most likely tokens (0 = all).
        top_p: keep the smallest set of tokens whose probability reaches p (1.0 = all).
        repetition_penalty: CTRL's penalty on tokens already in the prompt or the output (1.0 = none):
            positive logits are divided by it, negative ones multiplied.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise the tokens marked in ``seen`` (B, vocab) bool; ``logits`` is (B, vocab)."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but the ``k`` largest logits of each row (B, vocab) to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens until their probability reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, vocab)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the better tokens
    remove_sorted = before >= p  # the first token always stays (before == 0)
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (B, vocab) -> (B,), the first maximum on ties. On a CPU float32 tensor NumPy's argmax is
    used: it is about ten times faster there than torch's last-dimension argmax reduction (0.02 vs 0.26 ms for
    8 x 32000 on one thread), which matters once per decoded token."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2:
        return torch.from_numpy(logits.detach().contiguous().numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row.

    Args:
        logits: (B, vocab) next-token logits.
        params: the sampling settings.
        seen: (B, vocab) bool, tokens the repetition penalty applies to (needed when it is not 1).
        generator: random source for reproducible sampling.

    Returns:
        (B,) token ids.
    """
    if params.penalized:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return greedy(logits)
    logits = filter_top_p(filter_top_k(logits.float() / params.temperature, params.top_k), params.top_p)
    probs = logits.softmax(dim=-1)  # (B, vocab)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
