"""The generation engine: batched prompts with left padding, one prefill, then token-by-token decoding over a
preallocated KV cache. The CLI, the server, the benchmark and the tests all generate through ``Engine``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tencentpretrain.cache import KVCache
from tencentpretrain.config import ModelConfig
from tencentpretrain.generation.backend import Backend, TorchBackend
from tencentpretrain.generation.sampling import SamplingParams, sample, seeded_generator, seen_tokens
from tencentpretrain.model import Model


@dataclass
class Step:
    """One decoding step of a batch.

    Attributes:
        tokens: the token chosen for each of the B rows (the pad id for rows finished earlier).
        logits: (B, vocab) the logits the tokens were chosen from (before sampling filters).
        finished: for each row, whether it has ended (eos now or earlier, or stopped by the caller).
    """

    tokens: list[int]
    logits: torch.Tensor
    finished: list[bool]


class GenerationStream:
    """Iterates over the decoding steps of one batch; ``stop(row)`` ends a row early (e.g. on a stop string).

    Created by ``Engine.stream``; iterate it once.
    """

    def __init__(self, engine: Engine, prompts: Sequence[Sequence[int]], max_tokens: int,
                 sampling: SamplingParams, seed: int | None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_tokens < 1:
            raise ValueError(f"max_tokens (--max_new_tokens) must be >= 1, got {max_tokens}")
        self.engine = engine
        self.prompts = [list(p) for p in prompts]
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.finished = [False] * len(prompts)
        self.generator = seeded_generator(seed, engine.device)

    def stop(self, row: int) -> None:
        """Mark ``row`` finished: it is fed pad tokens from now on and the loop ends when all rows are."""
        self.finished[row] = True

    def __iter__(self) -> Iterator[Step]:
        """The steps. The engine runs the model's passes in inference mode (``Engine``), and nothing else here
        needs it: the caller's thread stays in its own grad mode, also with a stream read step by step or left
        half-read, and a native step pays for no switch of modes (its cost is in ``NativeBackend.decode``)."""
        return self._steps()

    def _prefill_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, T) and the real-token mask (B, T + max_tokens)."""
        ids, mask = left_pad(self.prompts, self.engine.pad_id, extra=self.max_tokens)
        return ids.to(self.engine.device), mask.to(self.engine.device)

    def _steps(self) -> Iterator[Step]:
        """The prefill, then one ``Backend.decode`` per token; the bookkeeping of a step is on Python lists (at
        batch 1 a tensor operation after a pass costs more than the Python: ``NativeBackend.decode``)."""
        engine, sampling, finished = self.engine, self.sampling, self.finished
        ids, mask = self._prefill_inputs()
        batch, width = ids.shape
        padded = not bool(mask.all())
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)  # (B, T): real tokens count from 0
        cache = engine.new_cache(batch, width + self.max_tokens - 1)
        seen = seen_tokens(self.prompts, engine.model.vocab_size, ids.device) if sampling.penalized else None
        logits = engine.backend.prefill(ids, positions, mask if padded else None, cache)  # (B, vocab): last position
        best = None  # the greedy tokens, when the step computed them
        pads = [width - len(p) for p in self.prompts]
        next_positions = [len(p) for p in self.prompts]
        eos = set(engine.eos_ids)
        for step in range(self.max_tokens):
            if best is None or not sampling.greedy or sampling.penalized:
                best = sample(logits, sampling, seen, self.generator).tolist()
            tokens = [engine.pad_id if done else token for token, done in zip(best, finished)]
            finished[:] = [done or token in eos for token, done in zip(tokens, finished)]
            yield Step(tokens, logits, finished.copy())
            if step + 1 == self.max_tokens or all(finished):
                return
            if seen is not None:
                seen[range(batch), tokens] = True
            logits, best = engine.backend.decode(tokens, next_positions, pads, cache)  # (B, vocab), the greedy tokens
            next_positions = [p + 1 for p in next_positions]


class Engine:
    """Generates token ids with a model, whose weights it uses as given (it only switches it to eval mode): prepare
    it first with ``generation.weights.prepare_for_inference`` (int8 weights, the CPU weight layout for speed).
    Its passes through the model run on ``backend``, in inference mode, whatever the caller's grad mode.

    Args:
        model: a ``Model`` (any dtype/device; the cache follows the word embedding's).
        backend: what runs the passes (``generation.backend.choose_backend``); None: PyTorch (``TorchBackend``).
        eos_ids: tokens that end a row (not included in the output of ``generate``).
        pad_id: the token fed as left padding and after a row ends (never attended to).
    """

    def __init__(self, model: Model, backend: Backend | None = None, eos_ids: Sequence[int] = (), pad_id: int = 0):
        model.config.require_causal("generation")
        if backend is not None and backend.model is not model:
            raise ValueError("the backend was chosen for another model")
        self.model = model.eval()
        weight = model.embedding.word.embedding.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.backend: Backend = backend or TorchBackend(model)
        self.eos_ids = tuple(eos_ids)
        self.pad_id = pad_id

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def new_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``length`` positions."""
        config = self.config
        return KVCache(config.layers_num, batch, config.kv_heads_num, length, config.head_dim,
                       dtype=self.dtype, device=self.device)

    def stream(self, prompts: Sequence[Sequence[int]], max_tokens: int,
               sampling: SamplingParams = SamplingParams(), seed: int | None = None) -> GenerationStream:
        """Decode a batch step by step.

        Args:
            prompts: token ids of each prompt (different lengths are left-padded).
            max_tokens: most tokens to generate per row.
            sampling: how to choose tokens (default greedy).
            seed: seed of the sampling random generator (None: torch's global generator).
        """
        return GenerationStream(self, prompts, max_tokens, sampling, seed)

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int,
                 sampling: SamplingParams = SamplingParams(), seed: int | None = None) -> list[list[int]]:
        """The new token ids of each prompt, up to (not including) its first eos."""
        outputs: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(prompts, max_tokens, sampling, seed):
            for row, (token, finished) in enumerate(zip(step.tokens, step.finished)):
                if not finished:  # an eos finishes its row at its own step; later steps give it pad tokens
                    outputs[row].append(token)
        return outputs


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) with each prompt right-aligned behind ``pad_id``, and the bool real-token mask
    (B, T + extra), ``extra`` positions for tokens yet to come counted as real."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.ones(len(prompts), width + extra, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, :width - len(prompt)] = False
    return ids, mask
