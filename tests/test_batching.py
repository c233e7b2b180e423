"""Continuous batching: every request gets what it gets alone, whatever joins and leaves beside it; cancelled
requests free their row; the slot cache keeps rows intact as they move (native decoding: tests/test_native.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import confident_model

from tencentpretrain.cache import KVCache
from tencentpretrain.cache.slots import SlotCache
from tencentpretrain.generation import Engine, SamplingParams
from tencentpretrain.generation.scheduler import Batcher, Request, TokenRequest

VOCAB = 500
TINY = {"mask": "causal", "layernorm_positioning": "pre", "target": ["lm"],
        "emb_size": 64, "hidden_size": 64, "feedforward_size": 160, "heads_num": 4, "local_kv_heads_num": 2,
        "layers_num": 2, "dropout": 0.0, "max_seq_length": 256, "embedding": ["word"],
        "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
        "feed_forward": "gated", "layernorm": "rms", "hidden_act": "silu"}


@pytest.fixture(scope="module")
def model():
    """A tiny LLaMA with large random weights (confident logits: greedy choices are not near-ties)."""
    return confident_model(TINY, VOCAB)


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, eos_ids=[2], pad_id=0)


def prompts(count: int, seed: int = 1, longest: int = 150) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest, (count,), generator=g).tolist()
    return [[1] + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


SETTINGS = [  # (max_tokens, sampling, seed): greedy, penalised, and sampled with a seed of its own
    (20, SamplingParams(), None), (37, SamplingParams(repetition_penalty=1.3), None),
    (9, SamplingParams(), None), (60, SamplingParams(temperature=0.8, top_k=20), 7),
    (44, SamplingParams(), None), (1, SamplingParams(), None),
    (51, SamplingParams(temperature=1.0, top_p=0.9), 3), (70, SamplingParams(), None),
]


def alone(engine: Engine, prompt: list[int], max_tokens: int, sampling: SamplingParams, seed) -> list[int]:
    return engine.generate([prompt], max_tokens, sampling, seed)[0]


@pytest.mark.parametrize("max_batch_size, chunk, slack", [(8, 16, 8), (3, 7, 0), (8, 512, None)])
def test_concurrent_requests_get_what_they_get_alone(engine, max_batch_size, chunk, slack):
    requests = list(zip(prompts(8), SETTINGS))
    expected = [alone(engine, p, *s) for p, s in requests]
    batcher = Batcher(engine, max_batch_size, max_length=256, prefill_chunk=chunk, slack=slack).start()
    try:
        submitted = [batcher.submit(TokenRequest(p, m, s, seed)) for p, (m, s, seed) in requests]
        got = [r.result(timeout=120) for r in submitted]
    finally:
        batcher.close()
    assert got == expected
    assert sum(len(e) >= 9 for e in expected) >= 5  # most ran long enough to overlap (not all ended on eos)
    assert batcher.metrics.rows_decoded > batcher.metrics.steps  # rows really were decoded together


def test_requests_arriving_while_others_decode(engine):
    """Requests submitted one by one between steps (stepped by hand): joins mid-decode, at every offset."""
    requests = list(zip(prompts(8, seed=5), SETTINGS))
    expected = [alone(engine, p, *s) for p, s in requests]
    batcher = Batcher(engine, max_batch_size=4, max_length=256, prefill_chunk=10, slack=4)
    submitted = []
    for prompt, (max_tokens, sampling, seed) in requests:
        submitted.append(batcher.submit(TokenRequest(prompt, max_tokens, sampling, seed)))
        for _ in range(3):
            batcher.step()
    while batcher.step():
        pass
    assert [r.result(timeout=0) for r in submitted] == expected
    assert batcher.running() == 0 and batcher.queue_length() == 0


class Stopper(Request):
    """Stops itself after ``keep`` tokens (as a stop string would), counting what it saw."""

    def __init__(self, prompt, keep: int):
        super().__init__(prompt, 100)
        self.keep, self.seen = keep, []

    def accept(self, token: int) -> bool:
        self.seen.append(token)
        return len(self.seen) < self.keep


def test_stop_and_cancel_free_rows(engine):
    never_ends = Engine(engine.model, eos_ids=[], pad_id=0)  # no eos: only length, stop or cancel end a request
    batcher = Batcher(never_ends, max_batch_size=1, max_length=256, prefill_chunk=16)
    long = batcher.submit(TokenRequest(prompts(1)[0], 150))
    for _ in range(15):
        batcher.step()
    assert batcher.running() == 1 and len(long.tokens) > 5
    queued = batcher.submit(TokenRequest(prompts(1, seed=2)[0], 5))
    batcher.step()
    assert not queued.done.is_set()  # the only row is taken
    long.cancel()
    while batcher.step():
        pass
    assert long.finish_reason == "cancelled" and len(long.tokens) < 150
    assert queued.result(timeout=0) == alone(never_ends, queued.prompt, 5, SamplingParams(), None)
    stopper = batcher.submit(Stopper(prompts(1, seed=3)[0], keep=4))
    while batcher.step():
        pass
    assert stopper.finish_reason == "stop" and stopper.completion_tokens == 4
    assert batcher.metrics.finished == {"cancelled": 1, "length": 1, "stop": 1}


def test_close_ends_every_request(engine):
    batcher = Batcher(engine, max_batch_size=1, max_length=256, prefill_chunk=4)
    requests = [batcher.submit(TokenRequest(prompt, 50)) for prompt in prompts(4, seed=6)]
    for _ in range(3):
        batcher.step()  # one prefilling, the others waiting (or still incoming)
    batcher.close()
    assert all(r.done.is_set() for r in requests)
    assert {r.finish_reason for r in requests} <= {"cancelled", "stop"} and requests[-1].finish_reason == "cancelled"


def test_too_long_and_empty_requests_are_refused(engine):
    batcher = Batcher(engine, max_batch_size=2, max_length=64)
    with pytest.raises(ValueError, match="exceed the 64 positions"):
        batcher.submit(TokenRequest([1] * 60, 5))
    with pytest.raises(ValueError, match="at least one token"):
        TokenRequest([], 5)
    with pytest.raises(ValueError, match="max_tokens"):
        TokenRequest([1], 0)


def test_a_failing_step_ends_its_requests_and_the_batcher_goes_on(engine):
    class Broken(TokenRequest):
        def accept(self, token):
            raise RuntimeError("consumer bug")

    batcher = Batcher(engine, max_batch_size=2, max_length=256).start()
    try:
        broken = batcher.submit(Broken(prompts(1)[0], 10))
        with pytest.raises(RuntimeError, match="consumer bug"):
            broken.result(timeout=60)
        fine = batcher.submit(TokenRequest(prompts(1, seed=4)[0], 6))
        assert fine.result(timeout=60) == alone(engine, fine.prompt, 6, SamplingParams(), None)
    finally:
        batcher.close()


def filled_cache(length: int, seed: int) -> KVCache:
    g = torch.Generator().manual_seed(seed)
    cache = KVCache(2, 1, 2, length, 4)
    cache.keys.copy_(torch.randn(cache.keys.shape, generator=g))
    cache.values.copy_(torch.randn(cache.values.shape, generator=g))
    cache.advance(length)
    return cache


def row_content(slots: SlotCache, row: int) -> torch.Tensor:
    cols = slots.mask[row, :slots.length]
    assert int(cols.sum()) == slots.span(row) and bool(cols[slots.starts[row]:].all())  # one contiguous span
    keys, values = slots.keys[:, row, :, :slots.length], slots.values[:, row, :, :slots.length]
    return torch.stack([keys[:, :, cols], values[:, :, cols]])


def test_slot_cache_rows_survive_joins_moves_and_realigns():
    slots = SlotCache(2, 3, 2, 14, 4)
    caches = {name: filled_cache(n, seed) for name, n, seed in [("a", 5, 0), ("b", 3, 1), ("c", 8, 2), ("d", 2, 3)]}
    rows = {name: slots.add(caches[name]) for name in "abc"}  # c is longer: a and b move right
    assert slots.length == 8 and rows == {"a": 0, "b": 1, "c": 2}
    for name, row in rows.items():
        expected = torch.stack([caches[name].keys[:, 0], caches[name].values[:, 0]])
        torch.testing.assert_close(row_content(slots, row), expected, rtol=0, atol=0)
    before_b, before_c = row_content(slots, 1).clone(), row_content(slots, 2).clone()
    assert slots.remove(0) == 2  # c moves into row 0
    torch.testing.assert_close(row_content(slots, 0), before_c, rtol=0, atol=0)
    assert slots.remove(0) == 1  # b moves into row 0
    torch.testing.assert_close(row_content(slots, 0), before_b, rtol=0, atol=0)
    assert slots.add(caches["d"]) == 1 and slots.length == 8  # d fits: it ends at column 8
    for _ in range(6):  # 8 + 6 = 14 columns: the next one needs a realign
        slots.open_column()
        slots.advance(1)
    spans = [slots.span(0), slots.span(1)]
    assert spans == [9, 8]
    contents = [row_content(slots, 0).clone(), row_content(slots, 1).clone()]
    mask = slots.open_column()
    assert slots.length == 9 and mask.shape == (2, 10) and bool(mask[:, 9].all())
    for row in range(2):
        assert slots.span(row) == spans[row]
        torch.testing.assert_close(row_content(slots, row), contents[row], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot realign"):
        slots.realign(8)
    with pytest.raises(ValueError, match="cannot realign"):
        slots.realign(15)


def exact(lengths: list[int], seed: int) -> list[list[int]]:
    """Prompts of the given lengths (bos, then random tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, VOCAB, (n - 1,), generator=g).tolist() for n in lengths]


class Spy:
    """Records the tokens of every forward pass of a model (``encode`` is what both ``forward`` and the batcher's
    prompt passes call)."""

    def __init__(self, model, monkeypatch):
        self.tokens: list[int] = []
        encode = model.encode

        def recording(src, *args, **kwargs):
            self.tokens.append(src.numel())  # (1, N) for a ragged pass, (R, 1) for a decoding step
            return encode(src, *args, **kwargs)

        monkeypatch.setattr(model, "encode", recording)


def test_several_prompts_are_prefilled_in_one_pass_with_the_decoding_rows(engine, monkeypatch):
    spy = Spy(engine.model, monkeypatch)
    never_ends = Engine(engine.model, eos_ids=[], pad_id=0)  # every request makes its 6 tokens
    batcher = Batcher(never_ends, max_batch_size=4, max_length=256, prefill_chunk=8)
    requests = [batcher.submit(TokenRequest(p, 6)) for p in exact([5, 12, 20], seed=13)]
    batcher.step()
    assert spy.tokens == [5 + 8 + 8]  # three prompts' chunks in one pass
    assert [r.completion_tokens for r in requests] == [1, 0, 0]  # the 5-token prompt is in: its first token
    batcher.step()
    assert spy.tokens[-1] == 1 + 4 + 8  # its decode rides along with the next chunks
    batcher.step()
    assert spy.tokens[-1] == 2 + 4 and [r.completion_tokens for r in requests] == [3, 2, 1]
    while batcher.step():
        pass
    assert spy.tokens[3:] == [3, 3, 3, 2, 1]  # then plain decoding steps of the rows left
    assert batcher.metrics.mixed_steps == 2 and batcher.metrics.passes == len(spy.tokens)
    assert [r.result(timeout=0) for r in requests] == [alone(never_ends, r.prompt, 6, SamplingParams(), None)
                                                       for r in requests]


def test_running_rows_decode_in_the_passes_that_read_a_long_prompt(engine, monkeypatch):
    spy = Spy(engine.model, monkeypatch)
    never_ends = Engine(engine.model, eos_ids=[], pad_id=0)
    batcher = Batcher(never_ends, max_batch_size=2, max_length=256, prefill_chunk=16)
    short, long_prompt = exact([10, 70], seed=14)
    running = batcher.submit(TokenRequest(short, 30))
    batcher.step()
    long = batcher.submit(TokenRequest(long_prompt, 8))
    counts = []
    for _ in range(6):
        batcher.step()
        counts.append(running.completion_tokens)
    assert spy.tokens == [10, 1 + 16, 1 + 16, 1 + 16, 1 + 16, 1 + 6, 2]  # one pass per step, never a stall
    assert counts == [2, 3, 4, 5, 6, 7] and long.completion_tokens == 2
    assert batcher.metrics.mixed_steps == 5
    while batcher.step():
        pass
    assert running.result(timeout=0) == alone(never_ends, running.prompt, 30, SamplingParams(), None)
    assert long.result(timeout=0) == alone(never_ends, long.prompt, 8, SamplingParams(), None)


def test_a_request_cancelled_mid_prefill_frees_its_row_in_the_same_step(engine, monkeypatch):
    spy = Spy(engine.model, monkeypatch)
    batcher = Batcher(engine, max_batch_size=2, max_length=256, prefill_chunk=8)
    cancelled, kept, queued = (batcher.submit(TokenRequest(p, 7)) for p in exact([60, 20, 11], seed=16))
    batcher.step()
    assert spy.tokens == [8 + 8] and batcher.queue_length() == 3  # two prefilling, one waiting for a row
    cancelled.cancel()
    batcher.step()
    assert cancelled.finish_reason == "cancelled" and cancelled.tokens == []
    assert spy.tokens[-1] == 8 + 8  # the freed row went to the queued request in the same step
    while batcher.step():
        pass
    for request in (kept, queued):
        assert request.result(timeout=0) == alone(engine, request.prompt, 7, SamplingParams(), None)
    assert batcher.running() == 0 and batcher.queue_length() == 0
    assert batcher.metrics.finished["cancelled"] == 1


def test_ragged_pass_computes_what_separate_passes_compute(model):
    """Two running rows and two prompt chunks in one pass against the decoding step and each chunk alone."""
    from tencentpretrain.cache.ragged import RaggedPass

    engine = Engine(model, eos_ids=[2])
    config = model.config
    first, second = exact([11, 5], seed=17)
    running = exact([9, 14], seed=18)
    slots = SlotCache(config.layers_num, 2, config.kv_heads_num, 40, config.head_dim)
    with torch.inference_mode():
        for prompt in running:
            cache = engine.new_cache(1, len(prompt))
            model.encode(torch.tensor([prompt]), None, None, cache)
            slots.add(cache)
        chunks = []
        for prompt, read in [(first, 6), (second, 0)]:  # one prompt with 6 tokens read already, one from its start
            cache = engine.new_cache(1, 20)
            if read:
                model.encode(torch.tensor([prompt[:read]]), None, None, cache)
            chunks.append((cache, prompt[read:read + 5], read))
        separate_slots, separate = copy.deepcopy(slots), [copy.deepcopy(c) for c, _, _ in chunks]
        decode_ids, decode_positions = [3, 4], [9, 14]
        ids = decode_ids + chunks[0][1] + chunks[1][1]
        positions = decode_positions + list(range(6, 11)) + list(range(0, 5))
        ragged = RaggedPass(slots, 2, [(c, 5) for c, _, _ in chunks])
        hidden = model.encode(torch.tensor([ids]), torch.tensor([positions]), None, ragged)[0]  # (12, hidden)
        mask = separate_slots.open_column()
        expected = [model.encode(torch.tensor([[3], [4]]), torch.tensor([[9], [14]]), mask, separate_slots)[:, 0]]
        for cache, (_, tokens, read) in zip(separate, chunks):
            expected.append(model.encode(torch.tensor([tokens]), torch.arange(read, read + 5)[None], None, cache)[0])
    scale = float(torch.cat(expected).abs().max())
    torch.testing.assert_close(hidden, torch.cat(expected), rtol=1e-5, atol=1e-5 * scale)
    assert slots.length == separate_slots.length == 15 and ragged.tokens == 12
    torch.testing.assert_close(slots.keys, separate_slots.keys, rtol=1e-5, atol=1e-5 * float(slots.keys.abs().max()))
    for (cache, _, read), alone_cache in zip(chunks, separate):
        assert cache.length == alone_cache.length == read + 5
        torch.testing.assert_close(cache.values, alone_cache.values, rtol=1e-5,
                                   atol=1e-5 * float(cache.values.abs().max()))
