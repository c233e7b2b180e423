"""Forward passes in one native call each, on every core the user gives it (``csrc/forward.c``).

PyTorch multiplies one input row by a weight on a single thread whatever ``torch.set_num_threads`` says, and a
decoding step of a small model spends milliseconds in Python between its products. ``NativeBackend`` runs a whole
pass of a LLaMA-shaped model in C instead: the products split by output rows over a team of threads that spin
between tasks, each weight read once for all the pass's tokens, with the norms, rotary positions, attention over the
cache and the SwiGLU around them. It implements the engine's ``Backend`` (``generation/backend.py``):

- a decoding step, one new token for each of B rows of a cache (``decode``, from plain lists, for the engine's
  streams; ``decode_batch``, from tensors, for the batcher), both also returning each row's argmax (the
  greedy token);
- left-padded prompts read into an empty cache, their real tokens only (``prefill``);
- a pass of the continuous batcher (``read``): the running rows' next tokens and chunks of the prompts being
  read, each chunk's tokens attending causally to their own request's cache. Beyond 8 tokens the products run in a
  register-blocked kernel that streams each weight once per tile of tokens held in L2 (a 64-token chunk: 1.7x
  PyTorch's pass on two threads, docs/benchmarks.md).

It reads the model's weights, rotary tables and KV caches where they are (nothing is copied) and writes the same
keys and values into the caches as the model would, so PyTorch passes and native ones mix freely. Every product
sums in one order whatever kernel, thread or group of rows computes it, so a token's results do not depend on the
tokens beside it: a request gets the same tokens alone or among others.

It takes the models this project exists for: pre-norm RMSNorm, gated SiLU feed-forward, rotary positions, no
biases, word embedding only, float32 on CPU, weights row-major or in the ``column`` layout (``PackedLinear`` with a
dense copy counts; so do q8_0 and q4_0 layers, ``--quant``; int8 or packed-only layers do not). ``support.py``
says why it cannot take any other model.

The library is built by ``build.py`` from ``csrc/``; the structs it takes are ``abi.py``'s. The logits equal
PyTorch's up to float rounding (the sums run in another order); the greedy tokens are the same (tested against the
PyTorch path).
"""

from __future__ import annotations

import ctypes
import weakref

import torch
from torch import nn

from tencentpretrain.generation.native.abi import (
    L,
    Layer,
    ModelStruct,
    Row,
    Unsupported,
    matrix_of,
    quantized_matrix_of,
    vector_of,
)
from tencentpretrain.generation.native.support import check_shape, linear_weight
from tencentpretrain.generation.native.team import Team
from tencentpretrain.generation.weights.q8 import BlockLinear

PASS_TOKENS = 256  # most tokens of one native call (a longer prompt is read in several)


Rows = tuple[list[Row], list[int]]  # the ``Row`` (forward.c's row_t) of each token, and the columns each sees


def left_spans(real: torch.Tensor, rows: int, columns: int) -> list[int]:
    """The first real column of each row of a (rows, columns) real-token mask whose True columns are one span ending
    at the last column (left padding).

    Raises:
        ValueError: any other mask (the native passes compute left padding only).
    """
    starts = columns - real.sum(1)  # (rows,)
    if real.shape != (rows, columns) or not torch.equal(real, torch.arange(columns, device=real.device) >=
                                                        starts[:, None]):
        raise ValueError(f"the native passes take left padding only: a ({rows}, {columns}) mask whose real tokens "
                         f"end each row, not one of shape {tuple(real.shape)} like this")
    return starts.tolist()


def joined(parts: list[Rows]) -> Rows:
    """The row descriptions of several groups of tokens, in order."""
    if len(parts) == 1:
        return parts[0]
    return [field for rows, _ in parts for field in rows], [span for _, spans in parts for span in spans]


class StepPlan:
    """The native arguments of decoding steps over the first B rows of one cache, with the same left padding,
    built once and written into at each step (``NativeBackend.decode``); it holds the cache weakly.

    Args:
        decoder: the decoder whose steps these are.
        cache: a cache the decoder can read (``check_cache``) with at least ``len(pads)`` rows.
        pads: the left padding of each row (its first real column).
    """

    def __init__(self, decoder: NativeBackend, cache, pads: list[int]):
        rows, self.pads = len(pads), list(pads)
        self.cache, self.keys, self.values = weakref.ref(cache), weakref.ref(cache.keys), weakref.ref(cache.values)
        self.columns = cache.keys.shape[3]
        described, _ = decoder._describe(cache, range(rows), [0] * rows, pads)  # the write column is set each step
        self.rows = (Row * rows)(*described)
        self.tokens, self.positions, self.best, self.picks = (L * rows)(), (L * rows)(), (L * rows)(), \
            (L * rows)(*range(rows))
        floats = decoder.lib.scratch_size(ctypes.byref(decoder.struct), rows, self.columns, decoder.threads)
        self.scratch = torch.empty(floats, dtype=torch.float32)
        self.scratch_pointer = self.scratch.data_ptr()
        self.read_tables(decoder.rotary, 0)

    def fits(self, cache, pads: list[int]) -> bool:
        """Whether these are the arguments for steps over ``cache`` (its tensors unchanged) with ``pads``."""
        return self.cache() is cache and self.keys() is cache.keys and self.values() is cache.values and \
            pads == self.pads

    def read_tables(self, rotary, position: int) -> None:
        """Take the rotary tables, grown first to cover ``position``."""
        if position >= rotary.cos.shape[0]:
            rotary(torch.tensor([position]))  # grows the tables
        self.cos, self.sin = rotary.cos, rotary.sin  # (positions, head_dim / 2) float32, contiguous
        self.cos_pointer, self.sin_pointer, self.table_rows = self.cos.data_ptr(), self.sin.data_ptr(), \
            self.cos.shape[0]


class NativeBackend:
    """Decoding steps of ``model`` in C (see the module docstring); build it with ``native_backend``.

    Args:
        model: a supported ``Model`` (checked: raises ``Unsupported`` otherwise).
        threads: threads of the products (the calling thread included).
        isa: the build of the native library to run (None: ``load_library``'s choice).
    """

    def __init__(self, model: nn.Module, threads: int, isa: str | None = None):
        self.model = model
        keep: list[torch.Tensor] = []  # every tensor the C side points into, kept alive here

        def vec(tensor, name, size):
            pointer, kept = vector_of(tensor, name, size)
            keep.append(kept)
            return pointer

        def mat(module, name):
            if isinstance(module, BlockLinear):
                matrix, kept = quantized_matrix_of(module.weight_q)
                keep.append(kept)
                return matrix
            matrix, kept = matrix_of(linear_weight(module, name), f"{name}.weight")
            keep.append(kept)
            return matrix

        config, encoder = model.config, model.encoder
        check_shape(model)
        hidden, layers = config.hidden_size, list(encoder.transformer)
        self.layers = (Layer * len(layers))()
        for i, layer in enumerate(layers):
            at, ff = f"encoder.transformer.{i}", layer.feed_forward
            linears = layer.self_attn.linear_layers
            self.layers[i] = Layer(vec(layer.layer_norm_1.weight, f"{at}.layer_norm_1.weight", hidden),
                                   vec(layer.layer_norm_2.weight, f"{at}.layer_norm_2.weight", hidden),
                                   *(mat(linears[j], f"{at}.self_attn.linear_layers.{j}") for j in range(3)),
                                   mat(layer.self_attn.final_linear, f"{at}.self_attn.final_linear"),
                                   mat(ff.linear_gate, f"{at}.feed_forward.linear_gate"),
                                   mat(ff.linear_1, f"{at}.feed_forward.linear_1"),
                                   mat(ff.linear_2, f"{at}.feed_forward.linear_2"))
        embedding = model.embedding.word.embedding.weight.detach()
        if not embedding.is_contiguous() or embedding.dtype != torch.float32 or embedding.device.type != "cpu":
            raise Unsupported("embedding.word.embedding.weight must be a contiguous float32 CPU tensor")
        keep.append(embedding)
        self.struct = ModelStruct(len(layers), hidden, config.heads_num, config.kv_heads_num, config.head_dim,
                                  config.feedforward_size, model.vocab_size, encoder.layer_norm.eps,
                                  embedding.data_ptr(), vec(encoder.layer_norm.weight, "encoder.layer_norm.weight",
                                                            hidden),
                                  mat(model.target["lm"].output_layer, "target.lm.output_layer"),
                                  ctypes.cast(self.layers, ctypes.POINTER(Layer)))
        self.keep = keep
        self.rotary = encoder.rotary  # its tables may grow (and be replaced) between calls: read them each call
        self.team = Team(threads, isa)
        self.lib = self.team.lib
        self.scratch = torch.empty(0)
        self.struct_pointer = ctypes.pointer(self.struct)
        self.plan: StepPlan | None = None  # the arguments of the last decoding steps (``decode``)
        self.description = f"native decoding on {self.threads} thread{'s' * (self.threads > 1)} ({self.lib.isa})"

    @property
    def threads(self) -> int:
        return self.team.threads

    def decode_batch(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor,
                     cache) -> tuple[torch.Tensor, list[int]]:
        """Logits (B, vocab) of one token of each of B rows, as ``model(tokens, positions, padding_mask, cache)``
        gives them for its one position (and the cache advanced by one), and each row's argmax: the batcher's
        decoding step.

        Args:
            tokens: (B, 1) token ids.
            positions: (B, 1) their rotary positions.
            padding_mask: (B, S) bool with S > cache.length, True for real tokens: each row's True columns up to
                ``cache.length`` must be one span ending there (left padding).
            cache: a ``KVCache`` or ``SlotCache`` whose first B rows are these rows.
        """
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"a decoding step takes one token per row, not {tuple(tokens.shape)}")
        pads = left_spans(padding_mask[:tokens.shape[0], :cache.length + 1], tokens.shape[0], cache.length + 1)
        return self.decode(tokens.view(-1).tolist(), positions.view(-1).tolist(), pads, cache)

    def decode(self, tokens: list[int], positions: list[int], pads: list[int],
               cache) -> tuple[torch.Tensor, list[int]]:
        """A decoding step from plain lists (``Engine.decode``): token ``tokens[b]`` at rotary position
        ``positions[b]`` for each of the first B rows of ``cache``, row b's real tokens starting at its column
        ``pads[b]`` (left padding). Returns the logits (B, vocab) and each row's largest (the greedy token, as
        ``torch.argmax`` picks it), the cache advanced by one.

        The arguments of the native call are kept from step to step (``StepPlan``) and only the token, position and
        column are written in, and no tensor work is done besides allocating the logits: once a pass has streamed
        the weights through the processor's caches, every PyTorch call or fresh Python object costs tens of
        microseconds of misses, at batch 1 a few percent of a token.
        """
        plan = self.plan
        if plan is None or not plan.fits(cache, pads):
            check_cache(cache, len(pads), cache.length + 1)
            plan = self.plan = StepPlan(self, cache, pads)
        length, rows, vocab = cache.length, len(tokens), self.struct.vocab
        if length + 1 > plan.columns:
            raise ValueError(f"KV cache full: {length + 1} positions needed, {plan.columns} allocated")
        if not all(0 <= t < vocab for t in tokens):
            raise IndexError(f"token ids {tokens} are not all in the vocabulary of {vocab}")
        last = max(positions)
        if last >= plan.table_rows:  # (the plan keeps the tables it read alive, grown or not since)
            plan.read_tables(self.rotary, last)
        for b in range(rows):
            plan.tokens[b], plan.positions[b], plan.rows[b].write = tokens[b], positions[b], length
        logits = torch.empty(rows, vocab, dtype=torch.float32)
        self.lib.forward_rows(self.team.handle, self.struct_pointer, rows, plan.tokens, plan.positions,
                              plan.cos_pointer, plan.sin_pointer, plan.rows, length + 1 - min(pads),
                              plan.scratch_pointer, rows, plan.picks, logits.data_ptr(), plan.best)
        cache.advance(1)
        return logits, plan.best[:]

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None,
                cache) -> torch.Tensor:
        """Logits (B, vocab) of the last token of each of B left-padded prompts (B, T) read into an empty ``cache``
        (advanced by T), as ``model.encode`` and the LM head on the last position give them; only the real tokens
        are computed and stored (the padding columns are never attended to)."""
        batch, width = tokens.shape
        if cache.length != 0:
            raise ValueError(f"a prompt is read into an empty cache; this one holds {cache.length} positions")
        check_cache(cache, batch, width)
        first = [0] * batch if padding_mask is None else left_spans(padding_mask[:, :width], batch, width)
        rows = joined([self._describe(cache, [b] * (width - f), range(f, width), [f] * (width - f))
                       for b, f in enumerate(first)])
        ids = [t for b, f in enumerate(first) for t in tokens[b, f:].tolist()]
        at = [p for b, f in enumerate(first) for p in positions[b, f:].tolist()]
        ends = torch.tensor([width - f for f in first]).cumsum(0) - 1  # each row's last token
        logits = self._run(ids, at, rows, ends.tolist())
        cache.advance(width)
        return logits

    def read(self, tokens: torch.Tensor, positions: torch.Tensor, ragged, picks: list[int]) -> torch.Tensor:
        """One pass of the continuous batcher (``cache/ragged.py``): the running rows' next tokens and the
        prompt chunks, (1, N) ``tokens`` at (1, N) ``positions`` laid out as ``ragged`` says, each token's key and
        value stored in its request's cache and the caches advanced as the model's pass would; the logits
        (len(picks), vocab) of the tokens at ``picks``."""
        if tuple(tokens.shape) != (1, ragged.tokens):
            raise ValueError(f"the pass has (1, {ragged.tokens}) tokens, not {tuple(tokens.shape)}")
        rows = []
        if ragged.decoding:
            slots, length = ragged.slots, ragged.slots.length
            pads = left_spans(ragged.decode_mask[:, 0, 0, :], ragged.decoding, length + 1)  # (R, length + 1)
            check_cache(slots, len(pads), length + 1)
            rows.append(self._describe(slots, range(len(pads)), [length] * len(pads), pads))
        for cache, count in ragged.chunks:
            check_cache(cache, 1, cache.length + count)
            rows.append(self._describe(cache, [0] * count, range(cache.length, cache.length + count), [0] * count))
        logits = self._run(tokens[0].tolist(), positions[0].tolist(), joined(rows), picks)
        ragged.advance(ragged.tokens)
        return logits

    @staticmethod
    def _describe(cache, cache_rows, writes, firsts) -> Rows:
        """The ``Row`` of each token in rows ``cache_rows`` of ``cache``, token i writing its column ``writes[i]`` and
        attending to columns ``firsts[i]`` .. ``writes[i]``; and the columns each attends to."""
        keys, values = cache.keys, cache.values
        k, v, row = keys.data_ptr(), values.data_ptr(), 4 * keys.stride(1)  # addresses, bytes from row to row
        strides = (keys.stride(0), keys.stride(2), keys.stride(3))
        rows = [Row(k + row * r, v + row * r, *strides, w, f) for r, w, f in zip(cache_rows, writes, firsts)]
        return rows, [w - f + 1 for w, f in zip(writes, firsts)]

    def _run(self, ids: list[int], at: list[int], described: Rows, picks: list[int]) -> torch.Tensor:
        """forward_rows over the tokens ``ids`` at positions ``at`` as ``described``: logits (picks, vocab), for
        ``picks`` in increasing order. At most ``PASS_TOKENS`` tokens per native call (the scratch grows with
        them): a token never attends to one after it, and each token's results are the same whatever else is in
        its call, so the calls compute exactly what one would."""
        if not all(0 <= i < self.struct.vocab for i in ids):
            raise IndexError(f"token ids {ids} are not all in the vocabulary of {self.struct.vocab}")
        rotary = self.rotary
        if max(at) >= rotary.cos.shape[0]:
            rotary(torch.tensor(at))  # grows the tables
        cos, sin = rotary.cos, rotary.sin  # (positions, head_dim / 2) float32, contiguous
        rows, spans = described
        logits = torch.empty(len(picks), self.struct.vocab, dtype=torch.float32)
        done = 0  # picks computed so far
        for start in range(0, len(ids), PASS_TOKENS):
            end = min(start + PASS_TOKENS, len(ids))
            part = (Row * (end - start))(*rows[start:end])
            here = [p - start for p in picks[done:] if p < end]
            span = max(spans[start:end])
            needed = self.lib.scratch_size(ctypes.byref(self.struct), end - start, span, self.team.threads)
            if self.scratch.numel() < needed:
                self.scratch = torch.empty(needed, dtype=torch.float32)
            self.lib.forward_rows(self.team.handle, ctypes.byref(self.struct), end - start,
                                  (L * (end - start))(*ids[start:end]), (L * (end - start))(*at[start:end]),
                                  cos.data_ptr(), sin.data_ptr(), part, span, self.scratch.data_ptr(),
                                  len(here), (L * len(here))(*here), logits.data_ptr() + 4 * done * self.struct.vocab,
                                  None)
            done += len(here)
        return logits


def check_cache(cache, rows: int, columns: int) -> None:
    """Raise ValueError unless the native passes can read and write ``rows`` rows of ``columns`` columns of
    ``cache``: float32 keys and values on the CPU, laid out alike, each head's columns contiguous."""
    keys, values = cache.keys, cache.values  # (layers, rows, kv_heads, columns, head_dim)
    if keys.dtype != torch.float32 or keys.device.type != "cpu" or keys.stride(-1) != 1 or \
            keys.stride() != values.stride() or values.dtype != torch.float32:
        raise ValueError(f"the native passes take float32 CPU caches with keys and values laid out alike, not "
                         f"{keys.dtype} on {keys.device}")
    if keys.shape[3] < columns:
        raise ValueError(f"KV cache full: {columns} positions needed, {keys.shape[3]} allocated")
    if keys.shape[1] < rows:
        raise ValueError(f"the cache has {keys.shape[1]} rows, the pass {rows}")
