"""Forward passes in one native call each, on every core the user gives it (``onerow.c``).

PyTorch multiplies one input row by a weight on a single thread whatever ``torch.set_num_threads`` says, and a
decoding step of a small model spends milliseconds in Python between its products. ``NativeDecoder`` runs a whole
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
dense copy counts; so do q8_0 and q4_0 layers, ``--quant``; int8 or packed-only layers do not). ``native_decoder``
says why it cannot take any other model.

The library is compiled from ``onerow.c`` on first use with the system C compiler (``$CC``, else ``cc``) into
``$TP_NATIVE_CACHE`` (default ``~/.cache/tencentpretrain``), once per version of the source and instruction set; it
needs an x86-64 CPU with AVX2 and FMA. ``TP_NATIVE=0`` turns it off. There are two builds of the same source
(``ISAS``): ``avx2``, and ``avx512``, whose products of several rows use 512-bit vectors (and sum in exactly the
order of the AVX2 build: the two compute the same bits). ``choose_isa`` picks ``avx512`` on a CPU with AVX-512F,
else ``avx2``; ``TP_NATIVE_ISA=avx2`` (or ``avx512``) forces one. The logits equal PyTorch's up to float rounding
(the sums run in another order); the greedy tokens are the same (tested against the PyTorch path).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from tencentpretrain.embeddings.embedding import WordEmbedding
from tencentpretrain.generation.layout import PackedLinear
from tencentpretrain.generation.q4 import Q4Weight
from tencentpretrain.generation.q8 import BlockLinear, Q8Weight
from tencentpretrain.hardware import CPU, cpu
from tencentpretrain.layers.activations import silu
from tencentpretrain.layers.feed_forward import GatedFeedForward
from tencentpretrain.layers.norm import RMSNorm

SOURCE = Path(__file__).with_name("onerow.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")
# The builds of onerow.c: the flags each adds to FLAGS, and the CPU features (hardware.py's names) it needs (every
# AVX2 CPU has F16C; every one with AVX512-VNNI has AVX-512 VL and BW). ``avx512vnni`` is ``avx512`` whose q8_0 and
# q4_0 products sum each block's integer products with VNNI's dpbusd (the same integers as AVX2's maddubs/madd).
ISAS = {"avx2": ((), ("avx2", "fma")), "avx512": (("-mavx512f",), ("avx2", "fma", "avx512f")),
        "avx512vnni": (("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni"),
                       ("avx2", "fma", "avx512f", "avx512_vnni"))}
SPIN_NS = 2_000_000  # an idle worker spins this long (between tokens and requests) before it sleeps

P, L = ctypes.c_void_p, ctypes.c_long


class Matrix(ctypes.Structure):
    _fields_ = [("w", P), ("out", L), ("in_", L), ("transposed", L), ("q", P), ("d", P), ("q4", L)]


class Layer(ctypes.Structure):
    _fields_ = [("attention_norm", P), ("feed_forward_norm", P)] + [
        (name, Matrix) for name in ("q", "k", "v", "o", "gate", "up", "down")]


class ModelStruct(ctypes.Structure):
    _fields_ = [(name, L) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "feedforward", "vocab")
                ] + [("eps", ctypes.c_float), ("embedding", P), ("final_norm", P), ("head", Matrix),
                     ("layer", ctypes.POINTER(Layer))]


ROW_FIELDS = 7  # onerow.c's row_t: keys, values, layer, head and column strides, write, first (8 bytes each)
PASS_TOKENS = 256  # most tokens of one native call (a longer prompt is read in several)
Rows = tuple[list[int], list[int]]  # onerow.c's row_t of each token (ROW_FIELDS each, flat), the columns each sees


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


class Unsupported(Exception):
    """Why the native decoder cannot run a model (or cannot run here)."""


def cache_dir() -> Path:
    return Path(os.environ.get("TP_NATIVE_CACHE") or Path.home() / ".cache" / "tencentpretrain")


def choose_isa(processor: CPU, setting: str = "auto") -> str:
    """The build of ``onerow.c`` (a key of ``ISAS``) to run on ``processor``.

    Args:
        processor: the CPU (``hardware.cpu()``).
        setting: ``auto`` (the widest build the CPU runs: ``avx512vnni`` with AVX512-VNNI, ``avx512`` with
            AVX-512F, else ``avx2``) or a build's name (``TP_NATIVE_ISA``).

    Raises:
        Unsupported: an unknown setting, or a build the CPU cannot run.
    """
    if setting == "auto":
        return next(isa for isa in ("avx512vnni", "avx512", "avx2") if all(processor.has(f) for f in ISAS[isa][1]))
    if setting not in ISAS:
        raise Unsupported(f"TP_NATIVE_ISA={setting!r} is not auto or one of {', '.join(ISAS)}")
    missing = [flag for flag in ISAS[setting][1] if not processor.has(flag)]
    if missing:
        raise Unsupported(f"TP_NATIVE_ISA={setting} needs {', '.join(missing)}, which this CPU lacks "
                          f"({processor.kind()})")
    return setting


@functools.cache
def load_library(isa: str | None = None) -> ctypes.CDLL:
    """The compiled ``onerow.c`` (built on first use, see the module docstring); its ``isa`` attribute names the
    build.

    Args:
        isa: the build (a key of ``ISAS``); None: ``choose_isa`` of this CPU and ``$TP_NATIVE_ISA`` (default auto).

    Raises:
        Unsupported: turned off, not an x86-64 CPU with AVX2 (or the build's features), no C compiler, or the build
            failed.
    """
    if os.environ.get("TP_NATIVE", "1") == "0":
        raise Unsupported("turned off by TP_NATIVE=0")
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        raise Unsupported(f"needs an x86-64 CPU with AVX2 and FMA (this is {platform.machine()}, "
                          f"{torch.backends.cpu.get_cpu_capability()})")
    if isa is None:  # the same library as when asked for the build by name
        return load_library(choose_isa(cpu(), os.environ.get("TP_NATIVE_ISA") or "auto"))
    isa = choose_isa(cpu(), isa)
    flags = FLAGS + ISAS[isa][0]
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise Unsupported(f"no C compiler {compiler!r} on PATH (set CC) to build {SOURCE.name}")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    target = cache_dir() / f"onerow-{isa}-{digest}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], capture_output=True,
                                    text=True, timeout=300)
            if result.returncode != 0:
                raise Unsupported(f"building {SOURCE.name} with {compiler} failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, target)  # whole or not at all, also with several processes building at once
    lib = ctypes.CDLL(str(target))
    lib.team_new.restype, lib.team_new.argtypes = P, [ctypes.c_int, L]
    lib.team_free.restype, lib.team_free.argtypes = None, [P]
    lib.team_threads.restype, lib.team_threads.argtypes = ctypes.c_int, [P]
    lib.team_product.restype, lib.team_product.argtypes = None, [P, ctypes.POINTER(Matrix), P, L, P]
    lib.scratch_size.restype, lib.scratch_size.argtypes = L, [ctypes.POINTER(ModelStruct), L, L, ctypes.c_int]
    lib.forward_rows.restype = None
    lib.forward_rows.argtypes = [P, ctypes.POINTER(ModelStruct), L, P, P, P, P, P, L, P, L, P, P, P]
    lib.vector_bits.restype, lib.vector_bits.argtypes = ctypes.c_int, []
    lib.q8_vnni.restype, lib.q8_vnni.argtypes = ctypes.c_int, []
    lib.quantize_row_q8.restype, lib.quantize_row_q8.argtypes = None, [P, L, P, P]
    lib.isa = isa
    return lib


class Team:
    """``threads - 1`` native worker threads that, with the caller, run each product; freed with the object.

    Args:
        threads: threads in all (the caller counts as one).
        isa: the build of ``onerow.c`` to run (None: ``load_library``'s choice).
    """

    def __init__(self, threads: int, isa: str | None = None):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.lib = load_library(isa)
        self.handle = self.lib.team_new(threads, SPIN_NS)
        if not self.handle:
            raise MemoryError("could not allocate the native thread team")
        self.threads = self.lib.team_threads(self.handle)

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.team_free(self.handle)
            self.handle = None

    def product(self, weight, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T`` for a float32 (out, in) weight, row- or column-major, and float32 rows ``x`` (rows, in);
        or, for a ``Q8Weight`` or ``Q4Weight``, the q8_0 or q4_0 product (``x`` quantised to q8_0, integer block
        sums times scales)."""
        quantized = isinstance(weight, (Q8Weight, Q4Weight))
        matrix, _ = quantized_matrix_of(weight) if quantized else matrix_of(weight, "weight")
        x = x.detach().float().contiguous()
        out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
        self.lib.team_product(self.handle, ctypes.byref(matrix), x.data_ptr(), x.shape[0], out.data_ptr())
        return out


def quantized_matrix_of(weight: Q8Weight | Q4Weight) -> tuple[Matrix, Q8Weight | Q4Weight]:
    """The C description of a q8_0 or q4_0 weight, and the object to keep."""
    out, in_ = weight.shape
    q4 = int(isinstance(weight, Q4Weight))
    return Matrix(0, out, in_, 0, weight.qs.data_ptr(), weight.scales.data_ptr(), q4), weight


def matrix_of(weight: torch.Tensor | None, name: str) -> tuple[Matrix, torch.Tensor]:
    """The C description of a float32 CPU (out, in) weight stored row- or column-major, and the tensor to keep."""
    if weight is None:
        raise Unsupported(f"{name} has no dense weight (a layer packed for oneDNN only)")
    weight = weight.detach()
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        raise Unsupported(f"{name} is {weight.dtype} on {weight.device}; the native decoder takes float32 on CPU")
    out, in_ = weight.shape
    if weight.is_contiguous():
        return Matrix(weight.data_ptr(), out, in_, 0), weight
    if weight.t().is_contiguous():
        return Matrix(weight.data_ptr(), out, in_, 1), weight
    raise Unsupported(f"{name} is neither row- nor column-major")


def vector_of(weight: torch.Tensor, name: str, size: int) -> tuple[int, torch.Tensor]:
    weight = weight.detach()
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.shape != (size,) or \
            not weight.is_contiguous():
        raise Unsupported(f"{name} must be a contiguous float32 CPU vector of {size}")
    return weight.data_ptr(), weight


def linear_weight(module: nn.Module, name: str) -> torch.Tensor | None:
    """The weight of a bias-free float linear layer: an ``nn.Linear``, or ``PackedLinear``'s dense copy (None for a
    layer packed without one)."""
    if type(module) is not nn.Linear and not isinstance(module, PackedLinear):
        raise Unsupported(f"{name} is a {type(module).__name__} (e.g. --int8), not a float, q8_0 or q4_0 linear "
                          "layer")
    if module.bias is not None:
        raise Unsupported(f"{name} has a bias")
    return module.weight


class StepPlan:
    """The native arguments of decoding steps over the first B rows of one cache, with the same left padding,
    built once and written into at each step (``NativeDecoder.step``); it holds the cache weakly.

    Args:
        decoder: the decoder whose steps these are.
        cache: a cache the decoder can read (``NativeDecoder._readable``) with at least ``len(pads)`` rows.
        pads: the left padding of each row (its first real column).
    """

    def __init__(self, decoder: NativeDecoder, cache, pads: list[int]):
        rows, self.pads = len(pads), list(pads)
        self.cache, self.keys, self.values = weakref.ref(cache), weakref.ref(cache.keys), weakref.ref(cache.values)
        self.columns = cache.keys.shape[3]
        fields, _ = decoder._describe(cache, range(rows), [0] * rows, pads)  # the write column is set each step
        self.rows = (L * len(fields))(*fields)
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


class NativeDecoder:
    """Decoding steps of ``model`` in C (see the module docstring); build it with ``native_decoder``.

    Args:
        model: a supported ``Model`` (checked: raises ``Unsupported`` otherwise).
        threads: threads of the products (the calling thread included).
        isa: the build of ``onerow.c`` to run (None: ``load_library``'s choice).
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
            plan.tokens[b], plan.positions[b], plan.rows[ROW_FIELDS * b + 5] = tokens[b], positions[b], length
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
        """One pass of the continuous batcher (``generation/ragged.py``): the running rows' next tokens and the
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
        """onerow.c's row_t of tokens in rows ``cache_rows`` of ``cache`` (ROW_FIELDS integers each, one flat list),
        each writing its column ``writes[i]`` and attending to columns ``firsts[i]`` .. ``writes[i]``; and the
        columns each attends to."""
        keys, values = cache.keys, cache.values
        k, v, row = keys.data_ptr(), values.data_ptr(), 4 * keys.stride(1)  # addresses, bytes from row to row
        strides = (keys.stride(0), keys.stride(2), keys.stride(3))
        fields = [field for r, w, f in zip(cache_rows, writes, firsts) for field in (k + row * r, v + row * r,
                                                                                    *strides, w, f)]
        return fields, [w - f + 1 for w, f in zip(writes, firsts)]

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
            part = (L * (ROW_FIELDS * (end - start)))(*rows[ROW_FIELDS * start:ROW_FIELDS * end])
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


def check_shape(model: nn.Module) -> None:
    """Raise ``Unsupported`` unless ``model`` is the LLaMA shape the C step computes."""
    config, encoder = model.config, model.encoder
    embedding = model.embedding
    if list(getattr(embedding, "names", [])) != ["word"] or not isinstance(embedding.word, WordEmbedding) or \
            embedding.layer_norm is not None:
        raise Unsupported("the embedding is not a word embedding alone (position embeddings or a layer norm)")
    if model.training:
        raise Unsupported("the model is in training mode (dropout)")
    if getattr(encoder, "rotary", None) is None or not getattr(encoder, "causal", False) or \
            not isinstance(encoder.layer_norm, RMSNorm):
        raise Unsupported("the encoder is not causal with rotary positions and a final RMSNorm")
    if encoder.rotary.cos.dtype != torch.float32 or not encoder.rotary.cos.is_contiguous():
        raise Unsupported("the rotary tables are not contiguous float32")
    for key, part in (("qkv_bias", "query/key/value biases"), ("qk_norm", "query/key norms"),
                      ("rope_scaling", "rope scaling"), ("sliding_window", "a sliding attention window")):
        if getattr(config, key, None):
            raise Unsupported(f"the model has {part} ({key}), which the C step does not compute")
    if config.hidden_size != config.emb_size or config.hidden_size != config.heads_num * config.head_dim or \
            config.heads_num % config.kv_heads_num:
        raise Unsupported("the attention shape is not hidden = heads x head_dim with whole key/value groups")
    for i, layer in enumerate(encoder.transformer):
        if not layer.pre_norm or not (isinstance(layer.layer_norm_1, RMSNorm) and
                                      isinstance(layer.layer_norm_2, RMSNorm)):
            raise Unsupported(f"layer {i} is not pre-norm RMSNorm")
        if {layer.layer_norm_1.eps, layer.layer_norm_2.eps} != {encoder.layer_norm.eps}:
            raise Unsupported(f"layer {i}'s norms have another eps than the final norm")
        if type(layer.feed_forward) is not GatedFeedForward or layer.feed_forward.act is not silu:
            raise Unsupported(f"layer {i}'s feed-forward is not gated SiLU (SwiGLU)")


def native_unavailable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be decoded natively here, whatever its weight layout (None: it can, with float32 CPU
    weights in the ``column`` layout)."""
    try:
        load_library()
        check_shape(model)
    except Unsupported as why:
        return str(why)
    return None


def native_decoder(model: nn.Module, threads: int) -> tuple[NativeDecoder | None, str]:
    """A ``NativeDecoder`` for ``model`` on ``threads`` threads, or None and the reason it cannot be used."""
    try:
        decoder = NativeDecoder(model, threads)
        return decoder, f"native decoding on {threads} thread{'s' * (threads > 1)} ({decoder.lib.isa})"
    except Unsupported as why:
        return None, f"decoding in PyTorch (not natively: {why})"
