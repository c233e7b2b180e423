"""Batched forward passes for evaluation: summed token log-likelihoods of windows, next-token logits of prompts.

Rows of a batch are right-padded: under the causal mask a real token never sees the padding after it, so no
padding mask is needed and positions count from 0 in every row. Rows are grouped by length (longest first) to
waste little work on padding; results come back in the callers' order. The LM head runs only on the positions
that are scored, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tencentpretrain.cache import KVCache
from tencentpretrain.model import Model

HEAD_CHUNK = 4096  # positions projected to the vocabulary at once (bounds the float32 logits' memory)


@dataclass(frozen=True)
class Window:
    """One forward pass of a rolling evaluation.

    Attributes:
        inputs: the token ids fed to the model.
        targets: the tokens predicted by the last ``len(targets)`` positions of ``inputs`` (position ``i``
            predicts the token after ``inputs[i]``).
    """

    inputs: list[int]
    targets: list[int]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """(B, T) token ids, each row followed by ``pad_id`` up to the longest."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device)


def model_device(model: Model) -> torch.device:
    """Where the model's inputs go (its word embedding's device)."""
    return model.embedding.word.embedding.weight.device


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped ``batch_size`` at a time, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def token_nll(model: Model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) float32 negative log-likelihood of ``targets`` (N,) under the LM head applied to ``hidden`` (N, H)."""
    head = model.target["lm"]
    parts = [F.cross_entropy(head.logits(hidden[start:start + HEAD_CHUNK]).float(),
                             targets[start:start + HEAD_CHUNK], reduction="none")
             for start in range(0, hidden.shape[0], HEAD_CHUNK)]
    return torch.cat(parts)


@torch.inference_mode()
def window_nlls(model: Model, windows: Sequence[Window], batch_size: int, pad_id: int,
                desc: str = "windows") -> list[float]:
    """The summed negative log-likelihood (nats, float64) of each window's targets.

    Args:
        model: the model, in eval mode.
        windows: what to score; every ``inputs`` no longer than the model's context.
        batch_size: windows per forward pass.
        pad_id: the token that pads short rows (never attended to by real tokens).
        desc: the progress bar's label (the bar shows on a terminal only).
    """
    device, out = model_device(model), [0.0] * len(windows)
    for indices in tqdm(length_batches([len(w.inputs) for w in windows], batch_size), desc=desc, unit="batch",
                        disable=None):
        batch = [windows[i] for i in indices]
        hidden = model.encode(right_pad([w.inputs for w in batch], pad_id, device))  # (B, T, H)
        scored = torch.cat([hidden[row, len(w.inputs) - len(w.targets):len(w.inputs)]
                            for row, w in enumerate(batch)])  # (N, H): the scored positions only
        targets = torch.tensor([t for w in batch for t in w.targets], dtype=torch.long, device=device)  # (N,)
        nll = token_nll(model, scored, targets).double()  # (N,)
        for index, part in zip(indices, nll.split([len(w.targets) for w in batch])):
            out[index] = float(part.sum())
    return out


@torch.inference_mode()
def next_token_logits(model: Model, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]],
                      batch_size: int, pad_id: int, desc: str = "prompts") -> list[list[float]]:
    """The float32 logits, after each prompt, of that prompt's candidate next tokens.

    Args:
        model: the model, in eval mode.
        prompts: token ids of each prompt (bos included if wanted).
        candidates: for each prompt, the token ids whose logits are wanted.
        batch_size: prompts per forward pass.
        pad_id: the padding token.
        desc: the progress bar's label.
    """
    device, out = model_device(model), [[] for _ in prompts]
    head = model.target["lm"]
    for indices in tqdm(length_batches([len(p) for p in prompts], batch_size), desc=desc, unit="batch",
                        disable=None):
        hidden = model.encode(right_pad([prompts[i] for i in indices], pad_id, device))  # (B, T, H)
        last = torch.stack([hidden[row, len(prompts[i]) - 1] for row, i in enumerate(indices)])  # (B, H)
        logits = head.logits(last).float()  # (B, vocab)
        for row, index in enumerate(indices):
            out[index] = logits[row, list(candidates[index])].tolist()
    return out


@torch.inference_mode()
def next_token_logits_after_prefix(model: Model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                                   candidates: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                                   desc: str = "prompts") -> list[list[float]]:
    """As ``next_token_logits`` for the prompts ``prefix + suffix``, running the shared prefix once.

    The prefix's keys and values are computed once and copied into every row of each batch's cache; only the
    suffixes (right-padded, at positions ``len(prefix)`` on) go through the model per batch.

    Args:
        model: the model, in eval mode.
        prefix: the token ids every prompt starts with (bos included if wanted; at least one token).
        suffixes: the rest of each prompt (at least one token each).
        candidates: for each prompt, the token ids whose logits are wanted.
        batch_size: prompts per forward pass.
        pad_id: the padding token.
        desc: the progress bar's label.
    """
    config, device = model.config, model_device(model)
    dtype = model.embedding.word.embedding.weight.dtype
    longest = max(len(suffix) for suffix in suffixes)
    shared = KVCache(config.layers_num, 1, config.kv_heads_num, len(prefix), config.head_dim, dtype, device)
    model.encode(right_pad([prefix], pad_id, device), cache=shared)
    head, out = model.target["lm"], [[] for _ in suffixes]
    for indices in tqdm(length_batches([len(s) for s in suffixes], batch_size), desc=desc, unit="batch",
                        disable=None):
        cache = KVCache(config.layers_num, len(indices), config.kv_heads_num, len(prefix) + longest,
                        config.head_dim, dtype, device)
        cache.keys[:, :, :, :len(prefix)] = shared.keys  # (layers, B, kv_heads, P, head_dim), broadcast over B
        cache.values[:, :, :, :len(prefix)] = shared.values
        cache.length = len(prefix)
        ids = right_pad([suffixes[i] for i in indices], pad_id, device)  # (B, T)
        positions = torch.arange(len(prefix), len(prefix) + ids.shape[1], device=device)  # (T,)
        hidden = model.encode(ids, positions, cache=cache)  # (B, T, H)
        last = torch.stack([hidden[row, len(suffixes[i]) - 1] for row, i in enumerate(indices)])  # (B, H)
        logits = head.logits(last).float()  # (B, vocab)
        for row, index in enumerate(indices):
            out[index] = logits[row, list(candidates[index])].tolist()
    return out
