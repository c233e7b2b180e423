"""Forward passes in one native call each, on every core the user gives it (``csrc/forward.c``).

PyTorch multiplies one input row by a weight on a single thread whatever ``torch.set_num_threads`` says, and a
decoding step of a small model spends milliseconds in Python between its products. ``NativeBackend`` runs a whole
pass of a LLaMA-shaped model in C instead: the products split by output rows over a team of threads that spin
between tasks, each weight read once for all the pass's tokens, with the norms, rotary positions, attention over the
cache and the SwiGLU around them. It takes three kinds of pass:

- a decoding step, one new token for each of B rows of a cache (``step``, from plain lists, for ``Engine.decode``;
  ``__call__``, from tensors, for ``Engine.forward``), also returning each row's argmax (the greedy token);
- left-padded prompts read into an empty cache, their real tokens only (``Engine.prefill``);
- a pass of the continuous batcher (``Engine.read``): the running rows' next tokens and chunks of the prompts being
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


def left_spans(real: torch.Tensor, rows: int, columns: int) -> list[int] | None:
    """The first real column of each row of a (rows, columns) real-token mask whose True columns are one span ending
    at the last column (left padding); None for any other mask."""
    if real.shape != (rows, columns):
        return None
    starts = columns - real.sum(1)  # (rows,)
    if not torch.equal(real, torch.arange(columns, device=real.device) >= starts[:, None]):
        return None
    return starts.tolist()


def pads_of(padding_mask: torch.Tensor | None, rows: int, columns: int) -> list[int] | None:
    """The left padding of each of the first ``rows`` rows of a real-token mask over ``columns`` columns (all 0 for
    None); None when a row's real tokens are not one span ending at the last column."""
    if padding_mask is None:
        return [0] * rows
    return left_spans(padding_mask[:rows, :columns], rows, columns)


def joined(parts: list[Rows]) -> Rows:
    """The row descriptions of several groups of tokens, in order."""
    if len(parts) == 1:
        return parts[0]
    return [field for rows, _ in parts for field in rows], [span for _, spans in parts for span in spans]


class StepPlan:
    """The native arguments of decoding steps over the first B rows of one cache, with the same left padding,
    built once and written into at each step (``NativeBackend.step``); it holds the cache weakly.

    Args:
        decoder: the decoder whose steps these are.
        cache: a cache the decoder can read (``NativeBackend._readable``) with at least ``len(pads)`` rows.
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
        self.plan: StepPlan | None = None  # the arguments of the last decoding steps (``step``)

    @property
    def threads(self) -> int:
        return self.team.threads

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None,
                 cache) -> torch.Tensor | None:
        """Logits (B, 1, vocab) of one token of each of B rows, as ``model(tokens, positions, padding_mask, cache)``
        returns them (and the cache advanced by one), or None when this call is not one the decoder takes (more
        than one token per row, a cache it cannot read, padding that is not a span on the left): the caller then
        runs the model.

        Args:
            tokens: (B, 1) token ids.
            positions: (B, 1) their rotary positions.
            padding_mask: None, or (B, S) bool with S > cache.length, True for real tokens: each row's True
                columns up to ``cache.length`` must be one span ending there (left padding).
            cache: a ``KVCache`` or ``SlotCache`` whose first B rows are these rows.
        """
        if tokens.dim() != 2 or tokens.shape[1] != 1 or cache is None:
            return None
        pads = pads_of(padding_mask, tokens.shape[0], cache.length + 1)
        done = None if pads is None else self.step(tokens.view(-1).tolist(), positions.view(-1).tolist(), pads, cache)
        return None if done is None else done[0].unsqueeze(1)

    def step(self, tokens: list[int], positions: list[int], pads: list[int],
             cache) -> tuple[torch.Tensor, list[int]] | None:
        """A decoding step from plain lists (``Engine.decode``): token ``tokens[b]`` at rotary position
        ``positions[b]`` for each of the first B rows of ``cache``, row b's real tokens starting at its column
        ``pads[b]`` (left padding). Returns the logits (B, vocab) and each row's largest (the greedy token, as
        ``torch.argmax`` picks it), the cache advanced by one; or None when the cache is not one it can read.

        The arguments of the native call are kept from step to step (``StepPlan``) and only the token, position and
        column are written in, and no tensor work is done besides allocating the logits: once a pass has streamed
        the weights through the processor's caches, every PyTorch call or fresh Python object costs tens of
        microseconds of misses, at batch 1 a few percent of a token.
        """
        plan = self.plan
        if plan is None or not plan.fits(cache, pads):
            if cache is None or not self._readable(cache) or cache.keys.shape[1] < len(pads):
                return None
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
                cache) -> torch.Tensor | None:
        """Logits (B, vocab) of the last token of each of B left-padded prompts (B, T) read into an empty ``cache``
        (advanced by T), as ``model.encode`` and the LM head on the last position give them; only the real tokens
        are computed and stored (the padding columns are never attended to). None when it cannot (see
        ``__call__``)."""
        if tokens.dim() != 2 or cache is None or cache.length != 0 or not self._readable(cache):
            return None
        batch, width = tokens.shape
        if cache.keys.shape[1] < batch or cache.keys.shape[3] < width:
            return None
        first = [0] * batch if padding_mask is None else left_spans(padding_mask[:, :width], batch, width)
        if first is None:
            return None
        rows = joined([self._describe(cache, [b] * (width - f), range(f, width), [f] * (width - f))
                       for b, f in enumerate(first)])
        ids = [t for b, f in enumerate(first) for t in tokens[b, f:].tolist()]
        at = [p for b, f in enumerate(first) for p in positions[b, f:].tolist()]
        ends = torch.tensor([width - f for f in first]).cumsum(0) - 1  # each row's last token
        logits = self._run(ids, at, rows, ends.tolist())
        cache.advance(width)
        return logits

    def read(self, tokens: torch.Tensor, positions: torch.Tensor, ragged, picks: list[int]) -> torch.Tensor | None:
        """One pass of the continuous batcher (``cache/ragged.py``): the running rows' next tokens and the
        prompt chunks, (1, N) ``tokens`` at (1, N) ``positions`` laid out as ``ragged`` says, each token's key and
        value stored in its request's cache and the caches advanced as the model's pass would; the logits
        (len(picks), vocab) of the tokens at ``picks``. None (nothing done) when a cache is not one it can read.
        """
        if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.shape[1] != ragged.tokens:
            return None
        rows = []
        if ragged.decoding:
            mask = ragged.decode_mask[:, 0, 0, :]  # (R, length + 1)
            pads = pads_of(mask, ragged.decoding, ragged.slots.length + 1)
            decoding = None if pads is None else self._decoding_rows(ragged.slots, pads)
            if decoding is None:
                return None
            rows.append(decoding)
        for cache, count in ragged.chunks:
            if not self._readable(cache) or cache.length + count > cache.keys.shape[3]:
                return None
            rows.append(self._describe(cache, [0] * count, range(cache.length, cache.length + count), [0] * count))
        logits = self._run(tokens[0].tolist(), positions[0].tolist(), joined(rows), picks)
        ragged.advance(ragged.tokens)
        return logits

    @staticmethod
    def _readable(cache) -> bool:
        keys, values = cache.keys, cache.values  # (layers, rows, kv_heads, columns, head_dim)
        return keys.dtype == torch.float32 and keys.device.type == "cpu" and keys.stride(-1) == 1 and \
            keys.stride() == values.stride() and values.dtype == torch.float32

    def _decoding_rows(self, cache, pads: list[int]) -> Rows | None:
        """The row descriptions of one new token for each of the first ``len(pads)`` rows of ``cache``, row b's
        real tokens from its column ``pads[b]`` (None: it cannot read the cache)."""
        if cache is None or not self._readable(cache) or cache.keys.shape[1] < len(pads):
            return None
        length = cache.length
        if length + 1 > cache.keys.shape[3]:
            raise ValueError(f"KV cache full: {length + 1} positions needed, {cache.keys.shape[3]} allocated")
        return self._describe(cache, range(len(pads)), [length] * len(pads), pads)

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


def native_backend(model: nn.Module, threads: int) -> tuple[NativeBackend | None, str]:
    """A ``NativeBackend`` for ``model`` on ``threads`` threads, or None and the reason it cannot be used."""
    try:
        decoder = NativeBackend(model, threads)
        return decoder, f"native decoding on {threads} thread{'s' * (threads > 1)} ({decoder.lib.isa})"
    except Unsupported as why:
        return None, f"decoding in PyTorch (not natively: {why})"
