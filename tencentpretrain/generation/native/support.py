"""Which models the native backend computes: the LLaMA shape (pre-norm RMSNorm, gated SiLU feed-forward, rotary
positions, no biases, word embedding only), float32 on CPU, weights row-major or in the ``column`` layout
(``PackedLinear`` with a dense copy counts; so do q8_0 and q4_0 layers; int8 or packed-only layers do not)."""

from __future__ import annotations

import torch
from torch import nn

from tencentpretrain.embeddings.embedding import WordEmbedding
from tencentpretrain.generation.native.abi import Unsupported
from tencentpretrain.generation.native.build import load_library
from tencentpretrain.generation.weights.layout import PackedLinear
from tencentpretrain.layers.activations import silu
from tencentpretrain.layers.feed_forward import GatedFeedForward
from tencentpretrain.layers.norm import RMSNorm


def linear_weight(module: nn.Module, name: str) -> torch.Tensor | None:
    """The weight of a bias-free float linear layer: an ``nn.Linear``, or ``PackedLinear``'s dense copy (None for a
    layer packed without one)."""
    if type(module) is not nn.Linear and not isinstance(module, PackedLinear):
        raise Unsupported(f"{name} is a {type(module).__name__} (e.g. --int8), not a float, q8_0 or q4_0 linear "
                          "layer")
    if module.bias is not None:
        raise Unsupported(f"{name} has a bias")
    return module.weight


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


def native_unavailable(model: nn.Module, quant: str = "none") -> str | None:
    """Why ``model`` cannot run natively here once prepared with ``quant`` (``weights.QUANTS``), whatever its weight
    layout (None: it can, with float32 CPU weights in the ``row`` or ``column`` layout). ``NativeBackend`` checks the
    prepared weights themselves (``linear_weight``, ``abi.matrix_of``)."""
    try:
        load_library()
        check_shape(model)
        weight = model.embedding.word.embedding.weight
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise Unsupported(f"the model is {weight.dtype} on {weight.device}; the native passes take float32 on CPU")
        if quant == "int8":
            raise Unsupported("int8 layers (--quant int8) are computed in PyTorch only")
    except Unsupported as why:
        return str(why)
    return None
