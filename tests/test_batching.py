"""Continuous batching: every request gets what it gets alone, whatever joins and leaves beside it; cancelled
requests free their row; the slot cache keeps rows intact as they move; one-row products over threads."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from conftest import confident_model

from tencentpretrain.generation import Engine, SamplingParams, prepare_for_inference
from tencentpretrain.generation.batching import Batcher, Request, TokenRequest
from tencentpretrain.generation.slots import SlotCache
from tencentpretrain.generation.threads import ThreadedGatedFeedForward, ThreadedLinear, ThreadTeam, use_threads
from tencentpretrain.layers.feed_forward import GatedFeedForward
from tencentpretrain.layers.kv_cache import KVCache

VOCAB = 500
TINY = {"emb_size": 64, "hidden_size": 64, "feedforward_size": 160, "heads_num": 4, "local_kv_heads_num": 2,
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


def test_thread_team_runs_everything_and_reraises():
    team = ThreadTeam(3)
    assert team.run([lambda i=i: i * i for i in range(3)]) == [0, 1, 4]
    assert team.run([lambda: threading.current_thread().name] * 2)[1].startswith("decode-")

    def boom():
        raise KeyError("worker")

    with pytest.raises(KeyError, match="worker"):
        team.run([lambda: 1, boom])
    assert team.run([lambda: 5]) == [5]  # still usable


@pytest.mark.parametrize("out_features, bias", [(1000, True), (100, False), (17, True)])
def test_threaded_linear_equals_linear(out_features, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, out_features, bias=bias)
    threaded = ThreadedLinear(linear, ThreadTeam(2))
    assert threaded.weight is linear.weight and list(threaded.state_dict()) == list(linear.state_dict())
    with torch.inference_mode():
        for shape in [(1, 64), (1, 1, 64), (3, 64), (2, 5, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(threaded(x), linear(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_threaded_feed_forward_equals_feed_forward(bias):
    torch.manual_seed(0)
    block = GatedFeedForward(64, 160, "silu", bias=bias)
    threaded = ThreadedGatedFeedForward(block, ThreadTeam(3))
    assert len(threaded.pieces) == 3 and list(threaded.state_dict()) == list(block.state_dict())
    with torch.inference_mode():
        for shape in [(1, 64), (1, 1, 64), (4, 64), (2, 3, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(threaded(x), block(x), rtol=1e-5, atol=1e-6)


def test_threads_give_the_same_tokens(model, monkeypatch):
    monkeypatch.setattr("tencentpretrain.generation.threads.SPLIT_MIN_WEIGHTS", 1)  # split even the tiny layers
    threads_before = torch.get_num_threads()
    single = Engine(copy.deepcopy(model), eos_ids=[2])
    split = Engine(copy.deepcopy(model), eos_ids=[2])
    try:
        use_threads(split.model, 3)
        assert sum(isinstance(m, ThreadedGatedFeedForward) for m in split.model.modules()) == 2
        assert sum(isinstance(m, ThreadedLinear) for m in split.model.modules()) == 2 * 4 + 1  # q k v o, head
        assert list(split.model.state_dict()) == list(single.model.state_dict())
        for prompt in prompts(3, seed=9):
            assert split.generate([prompt], 40) == single.generate([prompt], 40)
        batch = prompts(3, seed=10)
        assert split.generate(batch, 20) == single.generate(batch, 20)  # several rows: PyTorch's own path
        seen = []
        split.model.target["lm"].output_layer.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
        with torch.inference_mode():
            split.model(torch.tensor([[5]]))  # one token: PyTorch on one thread, the team does the rest
            split.model(torch.tensor([[5, 6]]))
        assert seen == [1, 3] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads_before)


def test_threads_split_the_dense_copy_of_packed_layers(model, monkeypatch):
    from tencentpretrain.generation.layout import PackedLinear, packing_available

    if not packing_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setattr("tencentpretrain.generation.layout.PACK_MIN_WEIGHTS", 1)  # pack every layer
    monkeypatch.setattr("tencentpretrain.generation.threads.SPLIT_MIN_WEIGHTS", 1)
    threads_before = torch.get_num_threads()
    single = Engine(copy.deepcopy(model), eos_ids=[2])
    both = Engine(prepare_for_inference(copy.deepcopy(model), layout="both", batch_size=4), eos_ids=[2])
    try:
        use_threads(both.model, 2)
        packed = [m for m in both.model.modules() if isinstance(m, PackedLinear)]
        assert len(packed) == 2 * 7 + 1 and all(m.one_row is not None for m in packed)
        for prompt in prompts(2, seed=11):
            assert both.generate([prompt], 30) == single.generate([prompt], 30)
        batch = prompts(3, seed=12)
        assert both.generate(batch, 15) == single.generate(batch, 15)  # several rows: oneDNN
        packed_only = Engine(prepare_for_inference(copy.deepcopy(model), layout="packed", batch_size=4), eos_ids=[2])
        use_threads(packed_only.model, 2)
        assert not packed_only.model._forward_pre_hooks  # oneDNN keeps PyTorch's threads for one token
        assert packed_only.generate(batch[:1], 15) == single.generate(batch[:1], 15)
    finally:
        torch.set_num_threads(threads_before)
