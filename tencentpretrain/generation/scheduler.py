"""Continuous (iteration-level) batching: requests join the running batch at the next step and leave it when done.

A ``Batcher`` owns up to ``max_batch_size`` rows of a ``SlotCache``. Each of its steps

1. drops the requests whose client cancelled them (their row is free for the next arrival at once, even when
   they were still being prefilled);
2. admits waiting requests, oldest first, while rows are free: each is prefilled into a one-row cache of its own
   and holds its row meanwhile;
3. runs **one forward pass** (``cache/ragged.py``) over the next token of every running row and the next chunk
   of at most ``prefill_chunk`` prompt tokens of **every** request being prefilled, laid end to end; each running
   row gets its next token (its own positions, sampling settings, random generator, stop test and
   ``max_tokens``; finished rows leave), and each request whose whole prompt is now in gets its first token and
   joins the running rows. A step with no prompt chunk is a plain batched decoding step, which the engine runs
   natively where it can (``Engine.forward``, generation/native/: every weight read once for all the rows, the
   products split over ``--threads``).

So the weights are read once per step for everything in it: every pass streams all of them from memory whatever
its size, so the running rows' decode rides along with the prompt chunks for a fraction of a decoding step of its
own, and several arrivals are prefilled at once.
A step reads at most ``prefill_chunk`` tokens per free row: the running rows are delayed by one chunk per request
being prefilled, not by whole prompts, and the more rows run, the fewer can be prefilled beside them. A request
computes what it would alone whatever runs beside it: its prompt is read in the same chunks (``prefill_chunk``
tokens each, from its start) attending to its own cache only, and in decoding the columns of the other rows are
masked out of its attention; only the products' row counts differ. Run the steps in a thread of their own with
``start()``, or call ``step()`` yourself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tencentpretrain.cache import KVCache
from tencentpretrain.cache.ragged import RaggedPass
from tencentpretrain.cache.slots import SlotCache
from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.finish import finish_reason
from tencentpretrain.generation.sampling import SamplingParams, greedy, sample, seeded_generator, seen_tokens
from tencentpretrain.generation.text import Completion, TextStream

LOG = logging.getLogger(__name__)
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed takes


class Request:
    """One prompt to complete. Subclasses receive the tokens through ``accept`` and the end through ``finish``;
    both are called from the batcher's thread.

    Args:
        prompt: token ids (at least one).
        max_tokens: most new tokens (eos included).
        sampling: how tokens are chosen.
        seed: seed of this request's own random generator (None: torch's global one).
    """

    def __init__(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingParams = SamplingParams(),
                 seed: int | None = None):
        if len(prompt) == 0:
            raise ValueError("the prompt needs at least one token")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
            raise ValueError(f"seed must be in [{SEED_MIN}, {SEED_MAX}], got {seed}")
        self.prompt, self.max_tokens, self.sampling, self.seed = list(prompt), max_tokens, sampling, seed
        self.completion_tokens = 0  # tokens chosen so far, eos included
        self.finish_reason: str | None = None  # stop, length, cancelled or error
        self.cancelled = False

    def cancel(self) -> None:
        """Ask the batcher to drop this request; its row is freed at the next step (thread-safe)."""
        self.cancelled = True

    def accept(self, token: int) -> bool:
        """A new token (not eos); return False to end the request here (e.g. a stop string appeared)."""
        return True

    def finish(self, reason: str, error: str | None = None) -> None:
        """The request ended: ``stop`` (eos or ``accept`` said so), ``length``, ``cancelled`` or ``error``."""


class TokenRequest(Request):
    """A request whose tokens are collected; ``result()`` blocks until it ends and returns them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.error: str | None = None

    def accept(self, token: int) -> bool:
        self.tokens.append(token)
        return True

    def finish(self, reason: str, error: str | None = None) -> None:
        self.finish_reason, self.error = reason, error
        self.done.set()

    def result(self, timeout: float | None = None) -> list[int]:
        """The new tokens (eos excluded), once the request has ended."""
        if not self.done.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        if self.error is not None:
            raise RuntimeError(self.error)
        return self.tokens


class TextRequest(Request):
    """A request whose tokens become text (``chat.TextStream``: stop strings, incomplete characters held back).

    ``on_event`` receives, from the batcher's thread, ``("text", piece)`` as text becomes final, then one of
    ``("end", Completion)`` or ``("error", message)``; nothing after a cancel.

    Args:
        prompt, max_tokens, sampling, seed: as for ``Request``.
        tokenizer: anything with ``decode(ids)``.
        stop: strings that end the text (not included in it).
        on_event: the consumer.
    """

    def __init__(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingParams, seed: int | None,
                 tokenizer, stop: Sequence[str], on_event):
        super().__init__(prompt, max_tokens, sampling, seed)
        self.text = TextStream(tokenizer, self.prompt[-1], stop)
        self.on_event = on_event

    def accept(self, token: int) -> bool:
        going_on = self.text.accept(token)
        piece = self.text.take()
        if piece:
            self.on_event(("text", piece))
        return going_on

    def finish(self, reason: str, error: str | None = None) -> None:
        if reason == "error":
            self.on_event(("error", error))
        elif reason != "cancelled":
            piece = self.text.finish()
            if piece:
                self.on_event(("text", piece))
            completion = Completion(self.text.text, reason, len(self.prompt), self.completion_tokens)
            self.on_event(("end", completion))


@dataclass
class Row:
    """A request's decoding state: its next position, the token to feed next, sampling state."""

    request: Request
    position: int
    next_token: int = 0
    seen: torch.Tensor | None = None  # (1, vocab) bool, for the repetition penalty
    generator: torch.Generator | None = None


@dataclass
class Prefill:
    """A request whose prompt is being read into a cache of its own, ``done`` tokens so far."""

    row: Row
    cache: KVCache
    done: int = 0


@dataclass
class Metrics:
    """Counters of a batcher (read from any thread; approximate while it runs)."""

    requests: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0  # decoding steps
    rows_decoded: int = 0  # sum over steps of the rows decoded
    mixed_steps: int = 0  # decoding steps whose forward pass also read prompt chunks
    passes: int = 0  # forward passes (decoding steps plus passes that only read prompts)


class Batcher:
    """Runs requests with continuous batching over an engine (see the module docstring).

    Args:
        engine: the token engine (its model and eos/pad ids).
        max_batch_size: most requests decoded together (rows of the cache).
        max_length: most positions of one request, prompt plus new tokens.
        prefill_chunk: most prompt tokens read per step for one request (several requests being prefilled
            each read a chunk in the same step).
        slack: extra cache columns (default ``max(16, max_length // 8)``): how often rows are realigned.
    """

    def __init__(self, engine: Engine, max_batch_size: int = 8, max_length: int = 2048, prefill_chunk: int = 64,
                 slack: int | None = None):
        if max_batch_size < 1 or max_length < 2 or prefill_chunk < 1:
            raise ValueError("max_batch_size and prefill_chunk must be >= 1 and max_length >= 2")
        config = engine.config
        if config.sliding_window is not None and config.sliding_window < max_length:
            raise ValueError(f"continuous batching does not apply the sliding window: max_length {max_length} is "
                             f"longer than the model's sliding_window {config.sliding_window}; lower max_length")
        self.engine, self.max_batch_size, self.max_length = engine, max_batch_size, max_length
        self.prefill_chunk = prefill_chunk
        capacity = max_length + (max(16, max_length // 8) if slack is None else slack)
        self.cache = SlotCache(config.layers_num, max_batch_size, config.kv_heads_num, capacity, config.head_dim,
                               engine.dtype, engine.device)
        self.rows: list[Row] = []  # index = cache row
        self.prefilling: list[Prefill] = []  # admitted requests whose prompt is being read, oldest first
        self.incoming: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.waiting: deque[Request] = deque()
        self.metrics = Metrics()
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self.closed = False

    # --- the public side (any thread) ---

    def submit(self, request: Request) -> Request:
        """Queue a request; it joins the batch at a following step."""
        if len(request.prompt) + request.max_tokens > self.max_length:
            raise ValueError(f"prompt ({len(request.prompt)} tokens) plus max_tokens ({request.max_tokens}) "
                             f"exceed the {self.max_length} positions of a request")
        self.metrics.requests += 1
        self.incoming.put(request)
        self.wakeup.set()
        return request

    def queue_length(self) -> int:
        """Requests waiting for a row (or being prefilled)."""
        return self.incoming.qsize() + len(self.waiting) + len(self.prefilling)

    def running(self) -> int:
        """Requests in the running batch."""
        return len(self.rows)

    def start(self) -> Batcher:
        """Run the steps in a daemon thread until ``close()``."""
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; requests still queued or running end as ``cancelled``."""
        self.closed = True
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        for request in [*self._drain_incoming(), *self.waiting, *[r.request for r in self.rows],
                        *[p.row.request for p in self.prefilling]]:
            self._end(request, "cancelled")
        self.rows, self.prefilling = [], []
        self.waiting.clear()

    def _loop(self) -> None:
        while not self.closed:
            try:
                busy = self.step()
            except Exception as err:  # noqa: BLE001 (a failed step ends its requests, not the server)
                LOG.exception("generation step failed")
                self._fail(f"{type(err).__name__}: {err}")
                busy = True
            if not busy:
                self.wakeup.wait(timeout=0.5)
                self.wakeup.clear()

    # --- the steps (the batcher's thread) ---

    def step(self) -> bool:
        """One scheduling step (see the module docstring); False when there was nothing to do."""
        self.waiting.extend(self._drain_incoming())
        self._drop_cancelled()
        while self.waiting and len(self.rows) + len(self.prefilling) < self.max_batch_size:
            self.prefilling.append(self._start_prefill(self.waiting.popleft()))
        if not self.rows and not self.prefilling:
            return False
        with torch.inference_mode():
            self._forward()
        return True

    def _drain_incoming(self) -> list[Request]:
        arrived = []
        while True:
            try:
                arrived.append(self.incoming.get_nowait())
            except queue.Empty:
                return arrived

    def _drop_cancelled(self) -> None:
        for index in reversed(range(len(self.rows))):
            if self.rows[index].request.cancelled:
                self._leave(index, "cancelled")
        for state in [p for p in self.prefilling if p.row.request.cancelled]:
            self.prefilling.remove(state)
            self._end(state.row.request, "cancelled")
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
            self._end(request, "cancelled")

    def _start_prefill(self, request: Request) -> Prefill:
        device = self.engine.device
        row = Row(request, position=len(request.prompt))
        if request.sampling.penalized:
            row.seen = seen_tokens([request.prompt], self.engine.model.vocab_size, device)
        row.generator = seeded_generator(request.seed, device)
        self.metrics.prompt_tokens += len(request.prompt)
        return Prefill(row, self.engine.new_cache(1, len(request.prompt)))

    def _forward(self) -> None:
        """One pass: a token of every running row and a chunk of every prompt being prefilled (module docstring)."""
        decoding = len(self.rows)
        chunks = [(state, state.done, min(state.done + self.prefill_chunk, len(state.row.request.prompt)))
                  for state in self.prefilling]  # (state, first, end) of each prompt's chunk
        if chunks:
            ids = [r.next_token for r in self.rows] + [t for s, a, b in chunks for t in s.row.request.prompt[a:b]]
            positions = [r.position for r in self.rows] + [i for _, a, b in chunks for i in range(a, b)]
            ids, positions = (torch.tensor([x], dtype=torch.long, device=self.engine.device)
                              for x in (ids, positions))  # (1, N) each
            ragged = RaggedPass(self.cache, decoding, [(state.cache, b - a) for state, a, b in chunks])
            (logits, done), best = self._read_chunks(ids, positions, ragged, chunks), None
        else:  # a plain batched decoding step, the engine's (native where it can: generation/native/)
            (logits, best), done = self._decode_step(), []  # (R, vocab), the greedy tokens or None
        self._count(decoding, bool(chunks))
        if decoding:
            self._decoded(logits[:decoding], best)  # rows may leave: self.rows shrinks
        if done:
            self._joined(done, logits[decoding:])

    def _decode_step(self) -> tuple[torch.Tensor, list[int] | None]:
        """Logits (R, vocab) of one decoding step of the running rows, each (R, 1) over its span of the slot cache,
        and each row's argmax when the backend computed it."""
        device = self.engine.device
        mask = self.cache.open_column()  # (R, length + 1)
        tokens = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=device)  # (R, 1)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long, device=device)  # (R, 1)
        return self.engine.backend.decode_batch(tokens, positions, mask, self.cache)

    def _read_chunks(self, ids: torch.Tensor, positions: torch.Tensor, ragged: RaggedPass,
                     chunks: list[tuple[Prefill, int, int]]) -> tuple[torch.Tensor, list[Prefill]]:
        """The pass with prompt chunks (``Backend.read``): logits (R + len(done), vocab) of the running rows and of
        the last token of each prompt now read in full (``done``); the LM head runs on those rows only."""
        ends, offset, done = list(range(ragged.decoding)), ragged.decoding, []
        for state, first, end in chunks:
            offset += end - first
            if end == len(state.row.request.prompt):
                ends.append(offset - 1)
                done.append(state)
        logits = self.engine.backend.read(ids, positions, ragged, ends)
        for state, first, end in chunks:
            state.done = end
        return logits, done

    def _count(self, rows: int, prefilled: bool) -> None:
        metrics = self.metrics
        metrics.passes += 1
        if rows:
            metrics.steps += 1
            metrics.rows_decoded += rows
            metrics.mixed_steps += prefilled

    def _decoded(self, logits: torch.Tensor, best: list[int] | None) -> None:
        """Hand each running row its next token from its logits (R, vocab) (or ``best``, the argmax of each, for
        greedy rows); finished rows leave."""
        leaving = []
        for index, (row, token) in enumerate(zip(self.rows, self._choose(logits, self.rows, best))):
            row.position += 1
            row.next_token = token
            if not self._deliver(row, token):
                leaving.append(index)
        for index in reversed(leaving):
            self._leave(index, None)

    def _joined(self, done: list[Prefill], logits: torch.Tensor) -> None:
        """Give each fully prefilled request its first token from its logits (len(done), vocab); it joins the
        running rows unless that token ended it."""
        for state, token in zip(done, self._choose(logits, [state.row for state in done])):
            state.row.next_token = token
            joins = self._deliver(state.row, token)  # may raise (a consumer's bug): _fail ends it as prefilling
            self.prefilling.remove(state)
            if joins:
                self.cache.add(state.cache)
                self.rows.append(state.row)

    def _choose(self, logits: torch.Tensor, rows: list[Row], best: list[int] | None = None) -> list[int]:
        """The next token of each row (B, vocab) -> B ints, each row with its own settings and generator; the
        greedy rows take ``best`` (each row's argmax, when the pass computed it)."""
        plain = [i for i, r in enumerate(rows) if r.request.sampling.greedy and not r.request.sampling.penalized]
        tokens = [0] * len(rows)
        if plain:
            picked = [best[i] for i in plain] if best is not None else \
                greedy(logits if len(plain) == len(rows) else logits[plain]).tolist()
            for i, token in zip(plain, picked):
                tokens[i] = token
        for i, row in enumerate(rows):
            if i in plain:
                continue
            tokens[i] = int(sample(logits[i:i + 1], row.request.sampling, row.seen, row.generator)[0])
            if row.seen is not None:
                row.seen[0, tokens[i]] = True
        return tokens

    def _deliver(self, row: Row, token: int) -> bool:
        """Hand a chosen token to its request; False when the request has ended."""
        request = row.request
        request.completion_tokens += 1
        self.metrics.completion_tokens += 1
        reason = finish_reason(token, request.completion_tokens, request.max_tokens, self.engine.eos_ids,
                               request.accept)
        if reason is not None:
            self._end(request, reason)
        return reason is None

    def _leave(self, index: int, reason: str | None) -> None:
        """Free row ``index`` (ending its request with ``reason`` unless None: already ended)."""
        if reason is not None:
            self._end(self.rows[index].request, reason)
        moved = self.cache.remove(index)
        last = self.rows.pop()
        if moved is not None:
            self.rows[index] = last

    def _end(self, request: Request, reason: str, error: str | None = None) -> None:
        if request.finish_reason is not None:  # ended already (a step failed after it ended)
            return
        request.finish_reason = reason
        self.metrics.finished[reason] = self.metrics.finished.get(reason, 0) + 1
        try:
            request.finish(reason, error)
        except Exception:  # noqa: BLE001 (a consumer's failure must not stop the batch)
            LOG.exception("finish callback failed")

    def _fail(self, error: str) -> None:
        """End every running and prefilling request with ``error`` and start afresh."""
        for request in [r.request for r in self.rows] + [p.row.request for p in self.prefilling]:
            self._end(request, "error", error)
        self.rows, self.prefilling = [], []
        self.cache.rows = self.cache.length = 0
