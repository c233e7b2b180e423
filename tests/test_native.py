"""Native passes (generation/native/, csrc/forward.c): products equal F.linear and never depend on the rows beside
them; logits and cache writes equal the PyTorch model's, for decoding steps and for the batcher's passes of running
rows and prompt chunks; greedy tokens equal transformers' and the PyTorch engine's on 1-3 threads, alone, batched
with left padding and inside the continuous batcher; every model or machine it cannot take is refused with a
reason. Every test runs with each native build (``isa``: AVX2, and AVX-512 and AVX-512 with VNNI where the CPU
has them); the builds compute the same bits, and an AVX2-only CPU gets the AVX2 build."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import confident_model
from test_generation import PROMPTS, hf_greedy, tiny_hf

from tencentpretrain.generation import Engine, load_generation_model, native, prepare_for_inference, quantize_int8
from tencentpretrain.generation.backend import TorchBackend, choose_backend
from tencentpretrain.generation.scheduler import Batcher, TokenRequest
from tencentpretrain.hardware import CPU, cpu

VOCAB = 500
TINY = {"mask": "causal", "layernorm_positioning": "pre", "target": ["lm"],
        "emb_size": 64, "hidden_size": 64, "feedforward_size": 160, "heads_num": 4, "local_kv_heads_num": 2,
        "layers_num": 2, "dropout": 0.0, "max_seq_length": 256, "embedding": ["word"],
        "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
        "feed_forward": "gated", "layernorm": "rms", "hidden_act": "silu"}


def native_or_skip():
    try:
        native.load_library()
    except native.Unsupported as why:
        pytest.skip(f"native decoding unavailable here: {why}")


@pytest.fixture(autouse=True, params=sorted(native.ISAS))
def isa(request, monkeypatch):
    """Each test with each native build (``TP_NATIVE_ISA``); the AVX-512 one only where the CPU runs it."""
    if not all(cpu().has(flag) for flag in native.ISAS[request.param][1]):
        pytest.skip(f"the {request.param} build needs {', '.join(native.ISAS[request.param][1])}: {cpu().kind()}")
    monkeypatch.setenv("TP_NATIVE_ISA", request.param)
    native.load_library.cache_clear()
    yield request.param
    native.load_library.cache_clear()


@pytest.fixture(scope="module")
def model():
    native_or_skip()
    return confident_model(TINY, VOCAB)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def prompts(count: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 90, (count,), generator=g).tolist()
    return [[1] + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("out_features, in_features", [(1000, 64), (37, 19), (160, 64), (64, 160), (3, 8)])
def test_product_equals_linear(threads, out_features, in_features):
    native_or_skip()
    team = native.Team(threads)
    torch.manual_seed(0)
    weight = torch.randn(out_features, in_features)
    column_major = weight.t().contiguous().t()  # the same values stored transposed (the column layout)
    for rows in (1, 2, 5, 8, 11, 50, 100):  # beyond 8 rows: the blocked kernel, 48 rows per pass over the weight
        x = torch.randn(rows, in_features)
        for w in (weight, column_major):
            torch.testing.assert_close(team.product(w, x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_a_rows_product_does_not_depend_on_the_rows_beside_it():
    """Every kernel sums in the same order, so a token computes the same bits in a decoding step of one row, of
    eight, or among a prompt chunk's rows: a request gets the same tokens whoever runs beside it."""
    native_or_skip()
    team = native.Team(2)
    torch.manual_seed(1)
    weight, x = torch.randn(203, 77), torch.randn(100, 77)
    alone = torch.cat([team.product(weight, x[i:i + 1]) for i in range(len(x))])
    for rows in (2, 3, 7, 8, 9, 49, 100):
        assert torch.equal(team.product(weight, x[:rows]), alone[:rows])


AVX2_ONLY = CPU("AMD EPYC 7B13", 2, frozenset({"avx2", "fma"}))
AVX512 = CPU("Intel(R) Xeon(R) Processor", 2, frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}))
AVX512_NO_VNNI = CPU("Intel(R) Xeon(R) Gold 6148", 2, frozenset({"avx2", "fma", "avx512f"}))


def test_an_avx2_only_cpu_gets_the_avx2_build():
    assert native.choose_isa(AVX2_ONLY) == native.choose_isa(AVX2_ONLY, "auto") == "avx2"
    assert native.choose_isa(AVX2_ONLY, "avx2") == "avx2"
    with pytest.raises(native.Unsupported, match="needs avx512f"):
        native.choose_isa(AVX2_ONLY, "avx512")
    assert native.choose_isa(AVX512) == "avx512vnni" and native.choose_isa(AVX512, "avx2") == "avx2"
    assert native.choose_isa(AVX512_NO_VNNI) == "avx512"
    with pytest.raises(native.Unsupported, match="needs avx512_vnni"):
        native.choose_isa(AVX512_NO_VNNI, "avx512vnni")
    with pytest.raises(native.Unsupported, match="not auto or one of avx2, avx512"):
        native.choose_isa(AVX512, "avx1024")


def test_the_environment_picks_the_build_and_the_build_is_what_it_says(isa):
    lib = native.load_library()
    assert lib.isa == isa and lib.vector_bits() == {"avx2": 256, "avx512": 512, "avx512vnni": 512}[isa]
    assert native.Team(1).lib is lib and native.Team(1, "avx2").lib.vector_bits() == 256


def test_the_two_builds_compute_the_same_bits(model):
    """The AVX-512 build multiplies two input rows per 512-bit vector, each in its own eight lanes: every sum runs
    in the AVX2 build's order, so products, prompts and decoding steps give the same bits on either."""
    if not cpu().has("avx512f"):
        pytest.skip(f"no AVX-512 here: {cpu().kind()}")
    narrow, wide = native.Team(2, "avx2"), native.Team(2, "avx512")
    torch.manual_seed(2)
    for out_features, in_features in ((203, 77), (160, 64), (64, 160), (37, 19), (3, 8)):
        weight = torch.randn(out_features, in_features)
        for w in (weight, weight.t().contiguous().t()):
            for rows in (1, 2, 3, 5, 8, 9, 24, 49, 100, 250):
                x = torch.randn(rows, in_features)
                assert torch.equal(narrow.product(w, x), wide.product(w, x)), (out_features, in_features, rows)
    runs = {}
    for name in ("avx2", "avx512"):
        copied = copy.deepcopy(model)
        engine = Engine(copied, native.NativeBackend(copied, 2, name))
        runs[name] = engine.generate(prompts(4, seed=3), 12), *logits_of_a_prompt_and_steps(engine)
    for got, expected in zip(runs["avx512"], runs["avx2"]):
        assert got == expected if isinstance(got, list) else torch.equal(got, expected)


def logits_of_a_prompt_and_steps(engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
    """The native logits of a 70-token prompt (the blocked kernel) and of three batch-1 steps after it."""
    prompt = torch.randint(3, VOCAB, (1, 70), generator=torch.Generator().manual_seed(4))
    cache = engine.new_cache(1, 80)
    with torch.inference_mode():
        first = engine.backend.prefill(prompt, torch.arange(prompt.shape[1])[None], None, cache)
        steps = []
        for i in range(3):
            logits, _ = engine.backend.decode([5 + i], [cache.length], [0], cache)
            steps.append(logits)
    return first, torch.cat(steps)


def test_decoder_logits_and_cache_equal_the_model(model):
    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 2)
    batch = PROMPTS[:2] + [[1, 7]]
    with torch.inference_mode():
        caches = []
        for _ in range(2):
            stream = engine.stream(batch, 1)
            ids, mask = stream._prefill_inputs()
            cache = engine.new_cache(len(batch), ids.shape[1] + 4)
            positions = (mask[:, :ids.shape[1]].cumsum(-1) - 1).clamp(min=0)
            engine.model.encode(ids, positions, mask, cache)
            caches.append(cache)
        tokens = torch.tensor([[5], [9], [400]])
        at = positions[:, -1:] + 1
        expected = engine.model(tokens, at, mask, caches[0])[:, 0]
        got, _ = decoder.decode_batch(tokens, at, mask, caches[1])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert caches[1].length == caches[0].length
    torch.testing.assert_close(caches[1].keys, caches[0].keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[1].values, caches[0].values, rtol=1e-5, atol=1e-5)


def test_a_step_picks_the_greedy_token_as_torch_argmax_does(model):
    """``NativeBackend.decode`` returns each row's argmax with its logits, as ``torch.argmax`` picks it: the first of
    tied maxima (equal LM head rows give bit-equal logits: products sum in one order) and the first NaN before any
    number."""
    decoder = native.NativeBackend(copy.deepcopy(model), 2)
    head = decoder.model.target["lm"].output_layer.weight
    engine = Engine(decoder.model)
    batch, pads = [[1, 5, 6, 7], [1, 9], [1, 300, 301]], [0, 2, 1]
    with torch.no_grad():
        cache = engine.new_cache(len(batch), 12)
        decoder.prefill(*left_padded(batch), cache)
        logits, best = decoder.decode([5, 9, 400], [4, 2, 3], pads, cache)
        assert best == logits.argmax(-1).tolist() and len(set(best)) > 1
        head.copy_(head[best[0]].expand_as(head))  # every logit of a row ties
        logits, best = decoder.decode([8, 8, 8], [5, 3, 4], pads, cache)
        assert best == logits.argmax(-1).tolist() == [0, 0, 0]
        head[200, 5] = head[37, 3] = float("nan")
        logits, best = decoder.decode([9, 9, 9], [6, 4, 5], pads, cache)
    assert best == logits.argmax(-1).tolist() == [37, 37, 37]


def test_a_step_equals_the_models_step_and_keeps_its_arguments_per_cache(model):
    """Steps over two caches in turn (the decoder's kept arguments switch from one cache to the other and back)
    give the model's logits for each."""
    decoder = native.NativeBackend(copy.deepcopy(model), 2)
    engine = Engine(decoder.model)
    batches = [[[1, 5, 6, 7], [1, 9]], [[1, 300, 301]]]
    with torch.no_grad():
        caches = {}
        for b, batch in enumerate(batches):
            ids, positions, mask = left_padded(batch, with_mask=True)
            caches[b] = [engine.new_cache(len(batch), 20), engine.new_cache(len(batch), 20)]
            for cache in caches[b]:
                engine.model.encode(ids, positions, mask, cache)
        for step in range(6):
            for b, batch in enumerate(batches):
                reference, ours = caches[b]
                ids, positions, mask = left_padded(batch, with_mask=True)
                width = ids.shape[1]
                pads = [width - len(p) for p in batch]
                at = [len(p) + step for p in batch]
                tokens = [(7 * step + 11 * row + 3) % VOCAB for row in range(len(batch))]
                mask = torch.cat([mask, torch.ones(len(batch), step + 1, dtype=torch.bool)], 1)
                expected = engine.model(torch.tensor(tokens)[:, None], torch.tensor(at)[:, None], mask, reference)
                logits, best = decoder.decode(tokens, at, pads, ours)
                torch.testing.assert_close(logits, expected[:, 0], rtol=1e-4, atol=1e-4)
                assert ours.length == reference.length
    torch.testing.assert_close(ours.keys, reference.keys, rtol=1e-5, atol=1e-5)


def left_padded(batch: list[list[int]], with_mask: bool = False):
    """Left-padded ids (B, T), positions (B, T) and (with_mask) the real-token mask (B, T) of prompts."""
    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in batch])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return (ids, positions, mask) if with_mask else (ids, positions, mask if not mask.all() else None)


def test_native_prefill_equals_the_model(model):
    """Left-padded prompts read natively: the last position's logits and the real tokens' keys and values equal
    the model's; the padding columns are left as they were (never attended to)."""
    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 2)
    batch = PROMPTS[:2] + [[1, 7], [1]]
    with torch.inference_mode():
        ids, mask = engine.stream(batch, 1)._prefill_inputs()
        width = ids.shape[1]
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        caches = [engine.new_cache(len(batch), width + 2) for _ in range(2)]
        hidden = engine.model.encode(ids, positions, mask, caches[0])
        expected = engine.model.target["lm"].logits(hidden[:, -1:])[:, 0]
        got = decoder.prefill(ids, positions, mask, caches[1])
        with pytest.raises(ValueError, match="empty cache"):  # a cache already holding tokens
            decoder.prefill(ids, positions, mask, caches[1])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert caches[1].length == caches[0].length == width
    for row, prompt in enumerate(batch):
        real = slice(width - len(prompt), width)
        torch.testing.assert_close(caches[1].keys[:, row, :, real], caches[0].keys[:, row, :, real], rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(caches[1].values[:, row, :, real], caches[0].values[:, row, :, real],
                                   rtol=1e-5, atol=1e-5)
        assert not caches[1].keys[:, row, :, :width - len(prompt)].any()


def test_long_prompts_are_read_in_several_native_calls_exactly(model, monkeypatch):
    """A prompt longer than PASS_TOKENS is read in several calls: bit for bit what one call computes, and what
    the model computes up to rounding."""
    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 2)
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(3, VOCAB, (2, 150), generator=g)
    positions = torch.arange(150).expand(2, 150)
    got = {}
    with torch.inference_mode():
        for tokens in (1000, 64, 7):
            monkeypatch.setattr(native.backend, "PASS_TOKENS", tokens)
            cache = engine.new_cache(2, 150)
            got[tokens] = decoder.prefill(ids, positions, None, cache), cache.keys.clone()
        cache = engine.new_cache(2, 150)
        expected = engine.model.target["lm"].logits(engine.model.encode(ids, positions, None, cache)[:, -1:])[:, 0]
    for tokens in (64, 7):
        assert torch.equal(got[tokens][0], got[1000][0]) and torch.equal(got[tokens][1], got[1000][1])
    torch.testing.assert_close(got[1000][0], expected, rtol=1e-4, atol=1e-4)


def assert_same_greedy_tokens(reference: Engine, fast: Engine, batch: list[list[int]], new_tokens: int) -> None:
    """Step by step, ``fast`` picks the tokens ``reference`` picks, except at a near-tie of the reference (its logits
    for the two tokens within 1e-5 of the logits' scale: float rounding may pick either), after which that row is
    no longer followed; most tokens must be compared."""
    followed, compared = set(range(len(batch))), 0
    for a, b in zip(reference.stream(batch, new_tokens), fast.stream(batch, new_tokens)):
        for row in sorted(followed):
            x, y = a.tokens[row], b.tokens[row]
            if x == y:
                compared += 1
                continue
            gap = float(a.logits[row, x] - a.logits[row, y])
            assert abs(gap) <= 1e-5 * float(a.logits[row].abs().max()), f"row {row}: {x} vs {y}, logit gap {gap}"
            followed.discard(row)
    assert compared >= len(batch) * min(new_tokens, 10)


@pytest.mark.parametrize("threads, layout", [(1, "row"), (2, "row"), (3, "row"), (2, "column")])
def test_native_tokens_equal_pytorch_alone_and_batched(model, threads, layout, isa):
    pytorch = Engine(copy.deepcopy(model))
    prepared = prepare_for_inference(copy.deepcopy(model), layout=layout)
    fast = Engine(prepared, choose_backend(prepared, threads))
    assert fast.backend.description == f"native decoding on {threads} thread{'s' * (threads > 1)} ({isa})"
    assert isinstance(fast.backend, native.NativeBackend) and fast.backend.threads == threads and \
        fast.backend.lib.isa == isa
    for prompt in prompts(3, seed=threads):
        assert_same_greedy_tokens(pytorch, fast, [prompt], 40)
    batch = prompts(5, seed=10 + threads)  # left padding: each row attends from its own first column
    assert_same_greedy_tokens(pytorch, fast, batch, 30)


def test_native_tokens_equal_transformers(tmp_path):
    native_or_skip()
    hf = tiny_hf(tmp_path, 2)
    loaded = load_generation_model(tmp_path)
    engine = Engine(loaded, choose_backend(loaded, 2), pad_id=0)
    assert isinstance(engine.backend, native.NativeBackend), engine.backend.description
    assert engine.generate(PROMPTS, 48) == hf_greedy(hf, PROMPTS, 48)
    for prompt in PROMPTS:
        assert engine.generate([prompt], 48) == hf_greedy(hf, [prompt], 48)


def test_native_decoding_inside_the_batcher(model):
    alone = Engine(copy.deepcopy(model), eos_ids=[2])
    copied = copy.deepcopy(model)
    spy = Spy(choose_backend(copied, 2))
    fast = Engine(copied, spy, eos_ids=[2])
    batch = prompts(6, seed=21)
    lengths = [5, 30, 12, 41, 1, 25]
    expected = [alone.generate([p], n)[0] for p, n in zip(batch, lengths)]
    batcher = Batcher(fast, max_batch_size=4, max_length=200, prefill_chunk=16, slack=4).start()
    try:
        requests = [batcher.submit(TokenRequest(p, n)) for p, n in zip(batch, lengths)]
        assert [r.result(timeout=120) for r in requests] == expected
    finally:
        batcher.close()
    assert spy.steps and max(spy.steps) > 1  # the decoder took the batched steps (rows joined at different columns)
    # and the passes with prompts: prompts alone, several prompts' chunks together, chunks beside running rows
    assert any(not rows for rows, _ in spy.passes) and any(rows and chunks for rows, chunks in spy.passes)
    assert any(chunks > 1 for _, chunks in spy.passes) and all(r is not None for r in spy.results)


def ragged_pass(model, seed: int):
    """A batcher pass on random caches: three running rows (spans of 9, 4 and 12 columns in a slot cache of 16)
    and two prompt chunks (5 tokens after 7 read, the first 6 tokens of another): its ids and positions (1, N),
    the ``RaggedPass``, and the caches to compare afterwards."""
    from tencentpretrain.cache import KVCache
    from tencentpretrain.cache.ragged import RaggedPass
    from tencentpretrain.cache.slots import SlotCache

    config, g = model.config, torch.Generator().manual_seed(seed)
    shape = (config.layers_num, config.kv_heads_num, config.head_dim)
    slots = SlotCache(shape[0], 4, shape[1], 16, shape[2])
    slots.keys.normal_(generator=g)
    slots.values.normal_(generator=g)
    slots.rows, slots.length = 3, 12
    for row, span in enumerate((9, 4, 12)):
        slots.starts[row] = 12 - span
        slots.mask[row, 12 - span:12] = True
    read = KVCache(shape[0], 1, shape[1], 20, shape[2])
    read.keys.normal_(generator=g)
    read.values.normal_(generator=g)
    read.length = 7
    fresh = KVCache(shape[0], 1, shape[1], 6, shape[2])
    ids = torch.randint(3, VOCAB, (1, 3 + 5 + 6), generator=g)
    positions = torch.tensor([[9, 4, 12] + list(range(7, 12)) + list(range(6))])
    return ids, positions, RaggedPass(slots, 3, [(read, 5), (fresh, 6)]), (slots, read, fresh)


def test_a_native_batcher_pass_equals_the_models(model):
    """Running rows and prompt chunks in one native pass: the logits of the tokens picked and every key and value
    stored equal the PyTorch pass's, and every cache is advanced alike."""
    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 2)
    picks = [0, 1, 2, 7, 13]  # the running rows and the last token of each chunk
    with torch.inference_mode():
        ids, positions, ragged, caches = ragged_pass(engine.model, seed=3)
        expected = engine.backend.read(ids, positions, ragged, picks)  # the engine's default: PyTorch
        ids, positions, ragged, native_caches = ragged_pass(engine.model, seed=3)
        got = decoder.read(ids, positions, ragged, picks)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for cache, other in zip(caches, native_caches):
        assert cache.length == other.length
        torch.testing.assert_close(other.keys, cache.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(other.values, cache.values, rtol=1e-4, atol=1e-4)
    assert [c.length for c in caches] == [13, 12, 6]


def test_a_prompt_computes_the_same_bits_alone_and_among_others(model):
    """Natively, a prompt chunk read beside running rows and another prompt, read alone in the batcher, or read by
    ``prefill`` gives the same logits and cache, bit for bit (every kernel sums in one order)."""
    from tencentpretrain.cache.ragged import RaggedPass

    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 2)
    with torch.inference_mode():
        ids, positions, ragged, (_, _, among) = ragged_pass(engine.model, seed=5)
        beside = decoder.read(ids, positions, ragged, [13])  # the last token of the second chunk
        alone, again = engine.new_cache(1, 6), engine.new_cache(1, 6)
        by_itself = decoder.read(ids[:, 8:], positions[:, 8:], RaggedPass(None, 0, [(alone, 6)]), [5])
        prefilled = decoder.prefill(ids[:, 8:], positions[:, 8:], None, again)
    assert torch.equal(beside, by_itself) and torch.equal(beside, prefilled)
    for cache in (alone, again):
        assert torch.equal(cache.keys, among.keys) and torch.equal(cache.values, among.values)


def test_a_native_pass_refuses_what_it_cannot_read(model):
    engine = Engine(copy.deepcopy(model))
    decoder = native.NativeBackend(engine.model, 1)
    with torch.inference_mode():
        ids, positions, ragged, (slots, read, fresh) = ragged_pass(engine.model, seed=4)
        slots.mask[1, 0] = True  # a row whose columns are not one span: only the model's masks can say that
        ragged.decode_mask = slots.open_column()[:, None, None, :]
        with pytest.raises(ValueError, match="left padding only"):
            decoder.read(ids, positions, ragged, [0])
        ids, positions, ragged, (slots, read, fresh) = ragged_pass(engine.model, seed=4)
        with pytest.raises(ValueError, match="the pass has"):  # not the pass's tokens
            decoder.read(ids[:, :-1], positions[:, :-1], ragged, [0])
        assert [c.length for c in (slots, read, fresh)] == [12, 7, 0]  # nothing advanced


class Spy:
    """A native backend that notes what it was given: the rows of each batcher decoding step, (running rows, prompt
    chunks) of each batcher pass, and the results of those passes."""

    def __init__(self, backend):
        self.backend, self.steps, self.passes, self.results = backend, [], [], []
        self.model, self.description = backend.model, backend.description

    def decode_batch(self, tokens, *args):
        self.steps.append(tokens.shape[0])
        return self.backend.decode_batch(tokens, *args)

    def read(self, tokens, positions, ragged, picks):
        self.passes.append((ragged.decoding, len(ragged.chunks)))
        logits = self.backend.read(tokens, positions, ragged, picks)
        self.results.append(logits)
        return logits


def test_positions_beyond_the_rotary_table_grow_it(model):
    small = copy.deepcopy(model)
    rotary = small.encoder.rotary
    rotary.cos, rotary.sin = rotary.cos[:40].clone(), rotary.sin[:40].clone()
    pytorch = Engine(copy.deepcopy(model), eos_ids=[2])
    fast = Engine(small, choose_backend(small, 2), eos_ids=[2])
    prompt = prompts(1, seed=5)[0][:30]
    assert fast.generate([prompt], 60) == pytorch.generate([prompt], 60)
    assert rotary.cos.shape[0] >= 90


def test_a_full_cache_is_an_error_not_a_write_past_its_end(model):
    copied = copy.deepcopy(model)
    engine = Engine(copied, choose_backend(copied, 2))
    cache = engine.new_cache(1, 3)
    with torch.inference_mode():
        engine.model.encode(torch.tensor([[1, 5, 6]]), None, None, cache)
        with pytest.raises(ValueError, match="KV cache full"):
            engine.backend.decode([7], [3], [0], cache)


def test_models_it_cannot_take_are_refused_with_a_reason(model, monkeypatch):
    gpt2 = dict(TINY, layernorm="normal", feed_forward="dense", hidden_act="gelu", rotary_position_embedding=False,
                embedding=["word", "pos"], remove_transformer_bias=False)
    cases = {
        "RMSNorm": confident_model(dict(TINY, layernorm="normal"), VOCAB),
        "word embedding alone": confident_model(gpt2, VOCAB),
        "gated SiLU": confident_model(dict(TINY, hidden_act="gelu"), VOCAB),
        "int8": quantize_int8(copy.deepcopy(model)),
    }
    for reason, other in cases.items():
        backend = choose_backend(other, 2)
        note = backend.description
        assert isinstance(backend, TorchBackend) and reason in note and note.startswith("decoding in PyTorch"), note
    from tencentpretrain.generation.weights.layout import packing_available

    if packing_available():
        monkeypatch.setattr("tencentpretrain.generation.weights.layout.PACK_MIN_WEIGHTS", 1)  # pack every layer
        packed = choose_backend(prepare_for_inference(copy.deepcopy(model), layout="packed", batch_size=4), 2)
        assert "packed for oneDNN only" in packed.description and isinstance(packed, TorchBackend)
        dense_too = prepare_for_inference(copy.deepcopy(model), layout="both", batch_size=4)  # a dense copy too
        both = Engine(dense_too, choose_backend(dense_too, 2))
        assert isinstance(both.backend, native.NativeBackend)
        batch = prompts(3, seed=7)
        assert both.generate(batch, 20) == Engine(copy.deepcopy(model)).generate(batch, 20)
    backend = choose_backend(copy.deepcopy(model), 2, native=False)
    assert backend.description == "decoding in PyTorch" and isinstance(backend, TorchBackend)


def test_turned_off_or_unbuildable_library_is_a_reason_not_a_crash(model, monkeypatch, tmp_path):
    native.load_library.cache_clear()
    try:
        monkeypatch.setenv("TP_NATIVE", "0")
        assert native.native_unavailable(model) == "turned off by TP_NATIVE=0"
        monkeypatch.delenv("TP_NATIVE")
        native.load_library.cache_clear()
        monkeypatch.setenv("TP_NATIVE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("CC", "no-such-compiler")
        assert "no C compiler 'no-such-compiler'" in native.native_unavailable(model)
        native.load_library.cache_clear()
        fake = tmp_path / "fakecc"
        fake.write_text("#!/bin/sh\necho 'forward.c:1: error: broken' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv("CC", str(fake))
        why = native.native_unavailable(model)
        assert "building forward.c" in why and "error: broken" in why
        assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built left behind
        native.load_library.cache_clear()
        monkeypatch.delenv("CC")
        assert native.native_unavailable(model) is None  # builds in the new cache folder
        assert len(list((tmp_path / "cache").glob("forward-*.so"))) == 1
    finally:
        native.load_library.cache_clear()


def test_streams_read_side_by_side_leave_the_grad_mode_as_it_was(model):
    copied = copy.deepcopy(model)
    engine = Engine(copied, choose_backend(copied, 2))
    alone = [engine.generate([[1, 5, 6]], 5)[0], engine.generate([[1, 7], [1, 8, 9, 10]], 9)]
    first, second = iter(engine.stream([[1, 5, 6]], 5)), iter(engine.stream([[1, 7], [1, 8, 9, 10]], 9))
    together = [[], []]
    for _ in range(3):
        together[0].append(next(first).tokens[0])
        together[1].append(next(second).tokens)
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert together[0] == alone[0][:3] and together[1] == [list(pair) for pair in zip(*alone[1])][:3]
    del first, second  # both left half-read
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
