"""The chunked LM head + cross-entropy against the unfused ``F.cross_entropy(hidden @ W.T + b)``."""

import pytest
import torch
import torch.nn.functional as F

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.layers import cross_entropy
from tencentpretrain.layers.cross_entropy import linear_cross_entropy
from tencentpretrain.targets import IGNORE_INDEX
from tencentpretrain.training.lora import apply_lora


def inputs(bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(37, 16, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_() if bias else None
    tgt = torch.randint(0, 50, (37,), generator=gen)
    tgt[::5] = -100
    return hidden, weight, b, tgt


def grads(loss_fn, hidden, weight, bias, tgt, scale):
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    loss = loss_fn(hidden, weight, bias, tgt)
    (loss * scale).backward()
    return [loss.detach()] + [t.grad.clone() for t in (hidden, weight, bias) if t is not None]


def reference(hidden, weight, bias, tgt):
    return F.cross_entropy(F.linear(hidden, weight, bias), tgt, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [4, 37, 64])  # many chunks with a ragged end, exactly one, one larger than N
def test_loss_and_gradients_match_unfused(monkeypatch, bias, rows):
    monkeypatch.setattr(cross_entropy, "chunk_rows", lambda vocab, device: rows)
    args = inputs(bias)
    fused = grads(linear_cross_entropy, *args, scale=0.37)
    expected = grads(reference, *args, scale=0.37)
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got.to(want.dtype), want, rtol=1e-6, atol=1e-9)


def test_no_grad_and_frozen_weight(monkeypatch):
    monkeypatch.setattr(cross_entropy, "chunk_rows", lambda vocab, device: 8)
    hidden, weight, bias, tgt = inputs(bias=False)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, None, tgt).double(),
                                   reference(hidden, weight, None, tgt))
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, None, tgt).backward()
    want = torch.autograd.grad(reference(hidden, weight, None, tgt), hidden)[0]
    torch.testing.assert_close(hidden.grad, want)
    assert weight.grad is None


def test_backward_twice_is_refused():
    hidden, weight, bias, tgt = inputs(bias=False)
    loss = linear_cross_entropy(hidden, weight, None, tgt)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(
        mask="causal", layernorm_positioning="pre", target=["lm"],
        emb_size=32, hidden_size=32, feedforward_size=64, heads_num=4, layers_num=2, dropout=0.0,
        max_seq_length=16, embedding=("word",), layernorm="rms", feed_forward="gated", hidden_act="silu",
        remove_transformer_bias=True, remove_embedding_layernorm=True, rotary_position_embedding=True,
        vocab_size=40, tie_weights=True))


@pytest.mark.parametrize("lora_head", [False, True])
def test_model_loss_matches_logits(lora_head):
    """``model.loss`` (fused, or unfused for a LoRA-wrapped head) equals cross-entropy of ``model(src)``."""
    model = tiny_model()
    if lora_head:
        apply_lora(model, rank=2, alpha=4, target_modules=("target.lm.output_layer",), train_modules=("encoder",))
    src = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1))
    tgt, mask = src.roll(-1, 1), torch.ones_like(src)
    mask[:, -1] = 0
    loss, metrics = model.loss({"src": src, "tgt": tgt.masked_fill(mask == 0, IGNORE_INDEX)})
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    expected = F.cross_entropy(model(src)[:, :-1].flatten(0, 1), tgt[:, :-1].flatten())
    expected.backward()
    torch.testing.assert_close(loss, expected)
    assert int(metrics["tokens"]) == 27
    for name, grad in fused.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)
