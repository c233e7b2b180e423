"""q4_0 (weights/q4.py, kernels.c's q4_product): the one quantiser equals the gguf package's (ggml's reference)
byte for byte and the GGUF q4_0 export holds the engine's bytes; the native q4_0 x q8_0 product equals a NumPy model
of the same arithmetic bit for bit on every build this CPU runs (AVX2's maddubs/madd, AVX512-VNNI's dpbusd), on
shapes with tails, on 1-3 threads, one and several input rows; the PyTorch reference computes the same bits; greedy
tokens of native q4_0 decoding equal the PyTorch q4_0 reference's; the options reach it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import confident_model
from test_native import TINY, VOCAB, assert_same_greedy_tokens, prompts
from test_q8 import SHAPES, runnable_isas, team_or_skip

from tencentpretrain.errors import InputError
from tencentpretrain.generation import Engine, native, prepare_for_inference
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.options import quant_of
from tencentpretrain.generation.weights.q4 import Q4Linear, Q4Weight, q4_matmul, unpack
from tencentpretrain.generation.weights.q8 import Q8Linear, quantize_blocks

gguf = pytest.importorskip("gguf")


def numpy_q4_product(x: np.ndarray, weight: Q4Weight) -> np.ndarray:
    """The q4_0 x q8_0 product modelled in NumPy float32 (each operation rounded as IEEE single precision): block b's
    lane l is the integer sum of products 4l .. 4l + 3 of the weight's q - 8 and the input's q8_0 integers; lanes
    gather float(sum) * (d_w * d_x), a multiply then an add; the lanes are then summed in hsum's order."""
    xq, xd = quantize_blocks(x)
    out = weight.shape[0]
    wq = unpack(weight.qs.numpy()).astype(np.int64).reshape(out, -1, 8, 4)
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
    weight[0, :32] = 0  # a block of zeros: scale 0, every nibble 8
    weight[1, :32] = torch.arange(32) - 15.5  # the largest magnitude negative
    weight[2, :32] = torch.arange(32) * 0.25 - 4  # values on the rounding boundaries
    weight[3, :32] = torch.tensor([2.0, -2.0] * 16)  # equal magnitudes: the first one's sign
    weight[4, 7] = 1e-30
    ours = Q4Weight(weight).gguf_bytes()
    theirs = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q4_0)
    assert ours.dtype == theirs.dtype == np.uint8 and np.array_equal(ours, theirs)
    back = gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.Q4_0)
    assert torch.equal(Q4Weight(weight).dequantized(), torch.from_numpy(back))


def test_nibbles_low_first_and_a_tail_padded_with_zeros():
    weight = torch.zeros(1, 40)
    weight[0, :32] = -8 * torch.ones(32)
    weight[0, 0], weight[0, 16] = 4.0, -4.0  # elements 0 and 16 share byte 0: low and high nibble
    q = Q4Weight(weight)
    assert q.qs.shape == (1, 32) and q.scales[0, 0].item() == 1.0
    assert q.qs[0, 0].item() == (12 | (4 << 4)) and q.qs[0, 1].item() == 0
    assert torch.equal(q.qs[0, 16:], torch.full((16,), 0x88, dtype=torch.uint8))  # the tail block: zeros (q = 8)
    torch.manual_seed(1)
    weight = torch.randn(4, 70)
    padded = Q4Weight(torch.nn.functional.pad(weight, (0, 26)))
    assert torch.equal(Q4Weight(weight).qs, padded.qs) and torch.equal(Q4Weight(weight).scales, padded.scales)
    err = (Q4Weight(weight).dequantized() - weight).abs()
    assert err.max() <= (weight.abs().max() / 8) * (0.5 + 8 / 2048) * 1.01 and err.mean() > 0


def test_our_gguf_q4_0_export_holds_the_engine_s_bytes(tmp_path, tiny_spm):
    from test_gguf import export, tensors_of

    config, state, path = export(tmp_path, tiny_spm, "gqa", "q4_0")
    data = tensors_of(path)
    pairs = {"blk.1.ffn_down.weight": ("encoder.transformer.1.feed_forward.linear_2.weight", Q4Linear),
             "blk.0.attn_q.weight": ("encoder.transformer.0.self_attn.linear_layers.0.weight", Q4Linear),
             "output.weight": ("target.lm.output_layer.weight", Q8Linear)}  # llama.cpp keeps the head in q8_0
    for name, (ours, kind) in pairs.items():
        want = gguf.GGMLQuantizationType.Q4_0 if kind is Q4Linear else gguf.GGMLQuantizationType.Q8_0
        assert data[name].tensor_type == want, name
        linear = torch.nn.Linear(state[ours].shape[1], state[ours].shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(state[ours])
        layer = kind(linear)
        held = layer.weight_q.gguf_bytes()  # what --quant q4_0 decodes with
        assert np.array_equal(np.asarray(data[name].data).reshape(held.shape), held), name


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("isa", runnable_isas())
def test_native_product_equals_numpy_bit_for_bit(isa, threads):
    """Exact equality: the block sums are integers, the scale d_w * d_x one float32 product, and the float additions
    run in one fixed order on both sides."""
    team = team_or_skip(threads, isa)
    torch.manual_seed(3)
    for out, in_ in SHAPES + [(9, 2048)]:
        weight = Q4Weight(torch.randn(out, in_))
        for rows in (1, 2, 3, 5, 8, 9, 50):
            x = torch.randn(rows, in_) * 2
            x[0, : min(in_, 32)] = 0  # a block of zeros in the input: scale 0
            got = team.product(weight, x)
            expected = numpy_q4_product(x.numpy(), weight)
            assert np.array_equal(got.numpy(), expected), (isa, out, in_, rows)
            assert torch.equal(q4_matmul(x, weight), got)  # the PyTorch reference: the same bits


def test_q4_product_is_close_to_the_float_product():
    torch.manual_seed(4)
    weight, x = torch.randn(64, 256), torch.randn(3, 256)
    exact = x @ weight.T
    assert (q4_matmul(x, Q4Weight(weight)) - exact).norm() / exact.norm() < 0.15


@pytest.fixture(scope="module")
def model():
    return confident_model(TINY, VOCAB)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", runnable_isas())
def test_native_q4_0_greedy_tokens_equal_the_pytorch_reference(model, isa, threads, monkeypatch):
    monkeypatch.setenv("TP_NATIVE_ISA", isa)
    native.load_library.cache_clear()
    try:
        pytorch = Engine(prepare_for_inference(copy.deepcopy(model), quant="q4_0", layout="row"))
        prepared = prepare_for_inference(copy.deepcopy(model), quant="q4_0", layout="row")
        fast = Engine(prepared, choose_backend(prepared, threads))
        note = fast.backend.description
        if not isinstance(fast.backend, native.NativeBackend):
            pytest.skip(note)
        assert note == f"native decoding on {threads} thread{'s' * (threads > 1)} ({isa})"
        assert isinstance(fast.model.encoder.transformer[0].feed_forward.linear_1, Q4Linear)
        assert isinstance(fast.model.target.lm.output_layer, Q8Linear)
        for prompt in prompts(2, seed=threads):
            assert_same_greedy_tokens(pytorch, fast, [prompt], 16)
        assert_same_greedy_tokens(pytorch, fast, prompts(3, seed=20 + threads), 12)
    finally:
        native.load_library.cache_clear()


def test_quant_options():
    class Args:
        quant, int8 = "q4_0", False

    assert quant_of(Args()) == "q4_0"
    Args.int8 = True
    with pytest.raises(InputError, match="contradicts --quant q4_0"):
        quant_of(Args())
    with pytest.raises(InputError, match="--quant q4_0 is for float32 models on CPU"):
        prepare_for_inference(confident_model(TINY, VOCAB).to(torch.bfloat16), quant="q4_0")


def test_run_llama_quant_q4_0_end_to_end(tiny_spm, tmp_path):
    """``run_llama.py --quant q4_0`` decodes natively where it can and writes greedy text; ``--int8`` with it is
    refused with a message naming both flags."""
    from train_support import MICRO_LLAMA, load_script

    from tencentpretrain.checkpoint import save_state_dict
    from tencentpretrain.config import ModelConfig
    from tencentpretrain.tokenizers import SentencePieceTokenizer

    model = confident_model(MICRO_LLAMA, SentencePieceTokenizer(tiny_spm).vocab_size)
    ModelConfig.from_dict(MICRO_LLAMA).save(tmp_path / "config.json")
    save_state_dict(model.state_dict(), tmp_path / "model.bin")
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("the model reads\nline one\n", encoding="utf-8")
    run_llama = load_script("run_llama", "inference")
    common = ["--load_model_path", str(tmp_path / "model.bin"), "--config_path", str(tmp_path / "config.json"),
              "--spm_model_path", str(tiny_spm), "--test_path", str(prompts_file), "--prediction_path",
              str(tmp_path / "out.txt"), "--seq_length", "64", "--max_new_tokens", "8", "--temperature", "0",
              "--quiet", "--batch_size", "2", "--device", "cpu"]
    texts = run_llama.main(common + ["--quant", "q4_0"])
    assert len(texts) == 2 and all(texts)
    with pytest.raises(InputError, match="--int8 is --quant int8; it contradicts --quant q4_0"):
        run_llama.main(common + ["--quant", "q4_0", "--int8"])
