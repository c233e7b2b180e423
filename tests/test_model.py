"""Model parts against reference implementations (transformers' layers and plain-math formulas)."""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.cache import KVCache
from tencentpretrain.layers import MultiHeadedAttention, apply_rotary
from tencentpretrain.layers.norm import LayerNorm, RMSNorm
from tencentpretrain.layers.rope import RotaryEmbedding
from tencentpretrain.targets import IGNORE_INDEX

LLAMA = dict(mask="causal", layernorm_positioning="pre", target=["lm"],
             emb_size=64, hidden_size=64, feedforward_size=96, heads_num=4, layers_num=2, dropout=0.0,
             max_seq_length=64, embedding=["word"], remove_transformer_bias=True, remove_embedding_layernorm=True,
             rotary_position_embedding=True, feed_forward="gated", hidden_act="silu", layernorm="rms")


def test_rms_norm_matches_transformers():
    torch.manual_seed(0)
    ours, theirs = RMSNorm(32, eps=1e-5), LlamaRMSNorm(32, eps=1e-5)
    ours.weight.data.normal_()
    theirs.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 5, 32) * 4
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-6)


def test_layer_norm_matches_torch():
    torch.manual_seed(0)
    ours, theirs = LayerNorm(32, eps=1e-5), torch.nn.LayerNorm(32, eps=1e-5)
    ours.gamma.data.normal_()
    ours.beta.data.normal_()
    theirs.weight.data.copy_(ours.gamma.data)
    theirs.bias.data.copy_(ours.beta.data)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    assert set(dict(ours.named_parameters())) == {"gamma", "beta"}  # TencentPretrain's names


def test_rotary_matches_complex_multiplication():
    """Meta's formulation: view pairs as complex numbers and multiply by e^{i * pos * theta^(-2j/d)}."""
    torch.manual_seed(0)
    head_dim, length = 16, 11
    x = torch.randn(2, length, 3, head_dim)
    rope = RotaryEmbedding(head_dim, 32, theta=10000.0)
    ours = apply_rotary(x, *rope(torch.arange(length)))
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).double() / head_dim))
    angles = torch.outer(torch.arange(length).double(), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    reference = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (-1, 2))) * rotation).flatten(-2)
    torch.testing.assert_close(ours, reference.float(), atol=1e-5, rtol=1e-5)


def test_rotary_tables_grow_beyond_precomputed_length():
    rope = RotaryEmbedding(8, 4)
    cos, _ = rope(torch.arange(10))
    assert cos.shape == (10, 1, 4) and rope.cos.shape[0] >= 10


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_grouped_query_attention_matches_explicit_math(kv_heads):
    torch.manual_seed(0)
    attn = MultiHeadedAttention(32, heads_num=4, kv_heads_num=kv_heads, dropout=0.0, bias=False).eval()
    x = torch.randn(2, 6, 32)
    head_dim = 8
    q = attn.linear_layers[0](x).view(2, 6, 4, head_dim).transpose(1, 2)
    k = attn.linear_layers[1](x).view(2, 6, kv_heads, head_dim).transpose(1, 2).repeat_interleave(4 // kv_heads, 1)
    v = attn.linear_layers[2](x).view(2, 6, kv_heads, head_dim).transpose(1, 2).repeat_interleave(4 // kv_heads, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.final_linear((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(attn(x, is_causal=True), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv", [None, 2])
def test_kv_cache_matches_full_forward(kv):
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**LLAMA, "local_kv_heads_num": kv})
    model = build_model(config, 50).eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(2, 2, config.kv_heads_num, 16, config.head_dim)
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_gives_the_unpadded_logits():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(LLAMA), 50).eval()
    short, long = torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])  # short is left-padded
    mask = batch != -1
    mask[0, :3] = False
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(batch, positions=positions, padding_mask=mask)
        torch.testing.assert_close(padded[0, 3:], model(short)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded[1], model(long)[0], atol=1e-5, rtol=1e-5)


def test_gpt2_parts_and_tied_head():
    config = ModelConfig.from_dict(dict(embedding=["word", "pos"], mask="causal", layernorm_positioning="pre",
                                        target=["lm"], emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4,
                                        layers_num=2,
                                        max_seq_length=16, hidden_act="gelu_fast", tie_weights=True,
                                        remove_embedding_layernorm=True))
    model = build_model(config, 40)
    assert model.target["lm"].output_layer.weight is model.embedding.word.embedding.weight
    names = set(model.state_dict())
    assert {"embedding.pos.embedding.weight", "encoder.transformer.1.layer_norm_2.gamma",
            "encoder.layer_norm.beta", "encoder.transformer.0.self_attn.linear_layers.2.bias"} <= names
    with pytest.raises(ValueError, match="beyond max_seq_length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_ignores_masked_targets():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(LLAMA), 50)
    src, tgt = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 4:] = True
    loss, metrics = model.loss({"src": src, "tgt": tgt.masked_fill(~mask, IGNORE_INDEX)})
    logits = model(src)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].flatten(0, 1), tgt[:, 4:].flatten())
    torch.testing.assert_close(loss, expected)
    assert metrics["tokens"] == 8


def test_vocab_size_disagreement_is_refused():
    config = ModelConfig.from_dict({**LLAMA, "vocab_size": 100})
    with pytest.raises(ValueError, match="vocab_size 100 .* disagrees with the tokenizer's 120"):
        build_model(config, 120)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from tencentpretrain.checkpoint import save_state_dict

    save_state_dict({"w": torch.zeros(2)}, tmp_path / "m.bin")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]
