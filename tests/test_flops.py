"""FLOP counting for MFU: the matmul parameter count agrees with the model, and the peak is measured."""

import pytest
import torch
from torch import nn

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.training.flops import matmul_params, measure_matmul_peak, mfu, model_flops_per_token


def llama(**overrides) -> ModelConfig:
    settings = dict(mask="causal", layernorm_positioning="pre", target=["lm"],
                    emb_size=64, hidden_size=64, feedforward_size=96, heads_num=4, layers_num=3, dropout=0.0,
                    max_seq_length=32, embedding=("word",), layernorm="rms", feed_forward="gated",
                    hidden_act="silu", remove_transformer_bias=True, remove_embedding_layernorm=True,
                    rotary_position_embedding=True, vocab_size=100)
    return ModelConfig(**{**settings, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"local_kv_heads_num": 2}, {"feed_forward": "dense", "hidden_act": "gelu"}])
def test_matmul_params_equal_the_models_linear_weights(overrides):
    config = llama(**overrides)
    model = build_model(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert matmul_params(config) == linear


def test_flops_per_token_by_hand():
    config = llama()
    n = 3 * (4 * 64 * 64 + 3 * 64 * 96) + 64 * 100
    assert model_flops_per_token(config, seq_length=32) == 6 * n + 12 * 3 * 64 * 32
    assert model_flops_per_token(config, 32, vocab_size=200) == 6 * (n + 64 * 100) + 12 * 3 * 64 * 32
    with pytest.raises(ValueError, match="vocabulary size"):
        model_flops_per_token(llama(vocab_size=None), 32)


def test_measured_peak_and_mfu():
    peak = measure_matmul_peak("cpu", torch.float32, size=128, repeats=2)
    assert 1e6 < peak < 1e15  # a real measurement in FLOP/s, not a constant
    assert mfu(tokens_per_second=10.0, flops_per_token=2e9, peak_flops=1e11) == pytest.approx(0.2)


@pytest.mark.parametrize("zoo", ["t5-v1_1/tiny_config.json", "bart/tiny_config.json"])
def test_encoder_decoder_flops_count_every_linear_weight(zoo):
    from pathlib import Path

    config = ModelConfig.from_json(Path(__file__).resolve().parents[1] / "models" / zoo, vocab_size=100)
    model = build_model(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert matmul_params(config) == linear  # the decoder's cross-attention and T5's narrower heads included
    layers = config.layers_num + 2 * config.decoder_layers
    assert model_flops_per_token(config, 16) == 6 * linear + 12 * layers * config.heads_num * config.head_dim * 16
