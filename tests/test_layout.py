"""CPU weight layouts of the generation engine: oneDNN-packed linear layers give the results of nn.Linear, and the
engine generates transformers' greedy tokens with every layout."""

from __future__ import annotations

import copy

import pytest
import torch
from test_generation import PROMPTS, VOCAB, hf_greedy, pair  # noqa: F401  (pair is a fixture)
from torch import nn

from tencentpretrain.config import ModelConfig
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.weights import layout as layout_module
from tencentpretrain.generation.weights.layout import PackedLinear, apply_layout, packing_available, weight_layout
from tencentpretrain.model import build_model

needs_onednn = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def pack_everything(monkeypatch):
    """Pack every linear layer, however small (the test models are far below the size threshold)."""
    monkeypatch.setattr(layout_module, "PACK_MIN_WEIGHTS", 0)


@needs_onednn
@pytest.mark.parametrize("keep_dense", [False, True], ids=["packed", "both"])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_linear(keep_dense, bias):
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    reference = copy.deepcopy(linear)
    packed = PackedLinear(linear, rows=8, keep_dense=keep_dense)
    with torch.inference_mode():
        for shape in [(48,), (1, 1, 48), (8, 1, 48), (3, 7, 48), (5, 48)]:
            x = torch.randn(shape)
            torch.testing.assert_close(packed(x), reference(x), atol=1e-5, rtol=1e-5)
    names = {name for name, _ in packed.named_parameters()}
    assert names == ({"weight"} if keep_dense else set()) | ({"bias"} if bias else set())
    if keep_dense:
        assert packed.weight.t().is_contiguous()  # the one-row copy is column-major


@needs_onednn
@pytest.mark.parametrize("layout", ["packed", "both"])
def test_packed_layouts_generate_transformers_tokens(pair, layout, pack_everything):  # noqa: F811
    hf, ours = pair
    model = copy.deepcopy(ours)
    engine = Engine(prepare_for_inference(model, layout=layout, batch_size=len(PROMPTS)), pad_id=0)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert engine.generate(PROMPTS, 64) == hf_greedy(hf, PROMPTS, 64)
    for prompt in PROMPTS[:2]:  # one row at a time: the dense copy ("both") or the packed weight ("packed")
        assert engine.generate([prompt], 64) == hf_greedy(hf, [prompt], 64)


@needs_onednn
def test_packed_layout_with_biases_and_learned_positions(pack_everything):
    """GPT-2's parts (biases, learned positions, LayerNorm): every cached step equals an unpacked full forward."""
    torch.manual_seed(0)
    config = ModelConfig(embedding=["word", "pos"], mask="causal", layernorm_positioning="pre", target=["lm"],
                         emb_size=64, hidden_size=64, feedforward_size=128, heads_num=4, layers_num=2, dropout=0.0,
                         max_seq_length=128)
    reference = build_model(config, VOCAB).eval()
    engine = Engine(prepare_for_inference(copy.deepcopy(reference), layout="packed", batch_size=3), pad_id=0)
    steps = list(engine.stream(PROMPTS, 12))
    tokens = torch.tensor([s.tokens for s in steps]).T  # (B, steps)
    for row, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            full = reference(torch.tensor(prompt + tokens[row].tolist())[None])[0]
        for t, step in enumerate(steps):
            torch.testing.assert_close(step.logits[row], full[len(prompt) - 1 + t], atol=1e-5, rtol=1e-5)


def test_only_large_layers_are_packed():
    config = ModelConfig(embedding=["word", "pos"], mask="causal", layernorm_positioning="pre", target=["lm"],
                         emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=1, dropout=0.0)
    model = build_model(config, layout_module.PACK_MIN_WEIGHTS // 32).eval()  # the head alone reaches the size
    if not packing_available():
        pytest.skip("this PyTorch build has no oneDNN")
    apply_layout(model, "packed", rows=4)
    packed = {name for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert packed == {"target.lm.output_layer"}
    for m in model.modules():
        if type(m) is nn.Linear:  # column-major when at least as tall as wide
            assert m.weight.t().is_contiguous() == (m.out_features >= m.in_features)


def test_layout_errors():
    config = ModelConfig(embedding=["word", "pos"], mask="causal", layernorm_positioning="pre", target=["lm"],
                         emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=1, dropout=0.0)
    with pytest.raises(ValueError, match="unknown weight layout 'rows'.*column, packed, both"):
        apply_layout(build_model(config, 50).eval(), "rows")
    if packing_available():
        half = build_model(config, 50).eval().to(torch.bfloat16)
        with pytest.raises(ValueError, match=r"float32 weights on CPU; .*linear_layers\.0\.weight is torch\.bfloat16"):
            apply_layout(half, "packed")


def test_auto_layout_choice():
    packed = "packed" if packing_available() else "column"
    assert weight_layout("auto", 8) == packed
    assert weight_layout("auto", 1) == "column"
    assert weight_layout("auto", 8, "cuda") == "column"
    assert weight_layout("auto", 8, "cpu", torch.bfloat16) == "column"
    assert weight_layout("both", 1) == "both"


def test_engine_runs_the_model_as_given_and_prepare_for_inference_rewrites_it():
    config = ModelConfig(embedding=["word", "pos"], mask="causal", layernorm_positioning="pre", target=["lm"],
                         emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=1, dropout=0.0)
    model = build_model(config, 64)
    head = model.target["lm"].output_layer
    Engine(model, pad_id=0)
    assert head.weight.is_contiguous()  # the engine left the (64, 32) head row-major
    assert prepare_for_inference(model) is model and not model.training
    assert head.weight.t().is_contiguous() and not head.weight.is_contiguous()  # column-major now
    quantized = prepare_for_inference(build_model(config, 64), int8=True)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    with torch.device("meta"):
        elsewhere = build_model(config, 64)
    with pytest.raises(ValueError, match="weight layout 'packed' is for CPU; the model is on meta"):
        prepare_for_inference(elsewhere, layout="packed")
