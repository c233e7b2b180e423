"""q8_0 (weights/q8.py, kernels.c's q8_product): the one quantiser equals the gguf package's (ggml's reference)
byte for byte and the GGUF export holds the engine's bytes; the native q8_0 product equals a NumPy model of the
same arithmetic bit for bit on every build this CPU runs (AVX2's maddubs/madd, AVX512-VNNI's dpbusd), on shapes
with tails, on 1-3 threads; the PyTorch reference computes the same bits; greedy tokens of native q8_0 decoding
equal the PyTorch q8_0 reference's; the options reach it."""

from __future__ import annotations

import copy
import ctypes

import numpy as np
import pytest
import torch
from conftest import confident_model
from test_native import TINY, VOCAB, assert_same_greedy_tokens, prompts

from tencentpretrain.errors import InputError
from tencentpretrain.generation import Engine, native, prepare_for_inference
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.options import quant_of
from tencentpretrain.generation.weights.q8 import Q8Linear, Q8Weight, q8_matmul, quantize_blocks
from tencentpretrain.hardware import cpu

gguf = pytest.importorskip("gguf")

SHAPES = [(37, 70), (64, 96), (5, 31), (130, 256), (3, 33), (1, 1)]  # out not a multiple of 4, in not of 32


def runnable_isas() -> list[str]:
    return [isa for isa in sorted(native.ISAS) if all(cpu().has(f) for f in native.ISAS[isa][1])]


def team_or_skip(threads: int, isa: str) -> native.Team:
    try:
        return native.Team(threads, isa)
    except native.Unsupported as why:
        pytest.skip(f"native kernel unavailable here: {why}")


def numpy_q8_product(x: np.ndarray, weight: Q8Weight) -> np.ndarray:
    """The q8_0 product modelled in NumPy float32 (each operation rounded as IEEE single precision): block b's lane
    l is the integer sum of products 4l .. 4l + 3; lanes gather float(sum) * (d_w * d_x), a multiply then an add;
    the lanes are then summed in hsum's order ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7))."""
    xq, xd = quantize_blocks(x)
    out = weight.shape[0]
    wq = weight.qs.numpy().astype(np.int64).reshape(out, -1, 8, 4)
    xq = xq.astype(np.int64).reshape(x.shape[0], -1, 8, 4)
    wd, xd = weight.scales.numpy().astype(np.float32), xd.astype(np.float32)
    acc = np.zeros((x.shape[0], out, 8), dtype=np.float32)
    for b in range(wq.shape[1]):
        sums = np.einsum("nlk,olk->nol", xq[:, b], wq[:, b]).astype(np.float32)  # exact integers
        scale = (wd[None, :, b] * xd[:, b, None]).astype(np.float32)
        acc = (acc + (sums * scale[..., None]).astype(np.float32)).astype(np.float32)
    return ((acc[..., 0] + acc[..., 4]) + (acc[..., 2] + acc[..., 6])) + ((acc[..., 1] + acc[..., 5]) +
                                                                          (acc[..., 3] + acc[..., 7]))


def test_the_quantiser_is_ggml_s_byte_for_byte():
    torch.manual_seed(0)
    weight = torch.randn(16, 128) * 3
    weight[0, :32] = 0  # a block of zeros: scale 0
    weight[1, :32] = torch.arange(32) - 15.5  # halves after scaling
    weight[2, 5] = 1e-30
    ours = Q8Weight(weight).gguf_bytes()
    theirs = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert ours.dtype == theirs.dtype == np.uint8 and np.array_equal(ours, theirs)


def test_a_tail_is_a_block_padded_with_zeros():
    torch.manual_seed(1)
    weight = torch.randn(4, 70)
    q = Q8Weight(weight)
    padded = Q8Weight(torch.nn.functional.pad(weight, (0, 26)))
    assert q.qs.shape == (4, 96) and torch.equal(q.qs, padded.qs) and torch.equal(q.scales, padded.scales)
    assert not q.qs[:, 70:].any()
    err = (q.dequantized() - weight).abs()
    assert err.max() <= (weight.abs().max() / 127) * (0.5 + 127 / 2048) and err.mean() > 0


def test_our_gguf_export_holds_the_engine_s_bytes(tmp_path, tiny_spm):
    from test_gguf import export, tensors_of

    config, state, path = export(tmp_path, tiny_spm, "gqa", "q8_0")
    data = tensors_of(path)
    pairs = {"blk.1.ffn_down.weight": "encoder.transformer.1.feed_forward.linear_2.weight",
             "blk.0.attn_q.weight": "encoder.transformer.0.self_attn.linear_layers.0.weight",
             "output.weight": "target.lm.output_layer.weight"}
    for name, ours in pairs.items():
        assert data[name].tensor_type == gguf.GGMLQuantizationType.Q8_0
        linear = torch.nn.Linear(state[ours].shape[1], state[ours].shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(state[ours])
        held = Q8Linear(linear).weight_q.gguf_bytes()  # what --quant q8_0 decodes with
        assert np.array_equal(np.asarray(data[name].data).reshape(held.shape), held), name


@pytest.mark.parametrize("isa", runnable_isas())
def test_native_activation_quantiser_equals_the_python_one(isa):
    team = team_or_skip(1, isa)
    torch.manual_seed(2)
    for n in (1, 31, 32, 70, 256):
        x = torch.randn(n) * 5
        x[: min(n, 3)] = torch.tensor([0.5, -1.5, 2.5])[: min(n, 3)] * (x.abs().max() / 127)
        blocks = -(-n // 32)
        q = (ctypes.c_int8 * (blocks * 32))()
        d = (ctypes.c_uint16 * blocks)()
        team.lib.quantize_row_q8(x.data_ptr(), n, ctypes.addressof(q), ctypes.addressof(d))
        qs, scales = quantize_blocks(x.numpy())
        assert np.array_equal(np.frombuffer(q, np.int8), qs) and np.array_equal(np.frombuffer(d, np.uint16),
                                                                                 scales.view(np.uint16))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("isa", runnable_isas())
def test_native_product_equals_numpy_bit_for_bit(isa, threads):
    """Exact equality: the block sums are integers (no rounding), the scale d_w * d_x one float32 product, and the
    float additions run in one fixed order on both sides, so nothing is left to rounding order."""
    team = team_or_skip(threads, isa)
    assert team.lib.q8_vnni() == (isa == "avx512vnni")
    torch.manual_seed(3)
    for out, in_ in SHAPES:
        weight = Q8Weight(torch.randn(out, in_))
        for rows in (1, 2, 5, 8, 9, 50):
            x = torch.randn(rows, in_) * 2
            got = team.product(weight, x)
            expected = numpy_q8_product(x.numpy(), weight)
            assert np.array_equal(got.numpy(), expected), (out, in_, rows)
            assert torch.equal(q8_matmul(x, weight), got)  # the PyTorch reference: the same bits


def test_q8_product_is_close_to_the_float_product():
    torch.manual_seed(4)
    weight, x = torch.randn(64, 256), torch.randn(3, 256)
    exact = x @ weight.T
    assert (q8_matmul(x, Q8Weight(weight)) - exact).norm() / exact.norm() < 0.02


@pytest.fixture(scope="module")
def model():
    return confident_model(TINY, VOCAB)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", runnable_isas())
def test_native_q8_0_greedy_tokens_equal_the_pytorch_reference(model, isa, threads, monkeypatch):
    monkeypatch.setenv("TP_NATIVE_ISA", isa)
    native.load_library.cache_clear()
    try:
        pytorch = Engine(prepare_for_inference(copy.deepcopy(model), quant="q8_0", layout="row"))
        prepared = prepare_for_inference(copy.deepcopy(model), quant="q8_0", layout="row")
        fast = Engine(prepared, choose_backend(prepared, threads))
        note = fast.backend.description
        if not isinstance(fast.backend, native.NativeBackend):
            pytest.skip(note)
        assert note == f"native decoding on {threads} thread{'s' * (threads > 1)} ({isa})"
        assert isinstance(fast.model.encoder.transformer[0].feed_forward.linear_1, Q8Linear)
        for prompt in prompts(2, seed=threads):
            assert_same_greedy_tokens(pytorch, fast, [prompt], 16)
        assert_same_greedy_tokens(pytorch, fast, prompts(3, seed=20 + threads), 12)
    finally:
        native.load_library.cache_clear()


def test_quant_options():
    class Args:
        quant, int8 = "none", True

    assert quant_of(Args()) == "int8"
    Args.quant = "q8_0"
    with pytest.raises(InputError, match="contradicts --quant q8_0"):
        quant_of(Args())
    Args.int8 = False
    assert quant_of(Args()) == "q8_0"
    with pytest.raises(InputError, match="float32 models on CPU"):
        prepare_for_inference(confident_model(TINY, VOCAB).to(torch.bfloat16), quant="q8_0")
