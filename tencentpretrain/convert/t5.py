"""T5 checkpoints: Hugging Face ``T5ForConditionalGeneration`` (v1.0: relu, tied head; v1.1: gated-gelu, untied)
<-> TencentPretrain.

One key map per feed-forward kind (``wi`` for v1.0's dense layer, ``wi_0``/``wi_1`` for the gated one), used both
ways. Hugging Face keeps each bias table in layer 0 of its stack; ours are ``encoder.relative_pos_emb`` and
``decoder.self_pos_emb``, and the encoder's is also written under each layer's name (``convert/seq2seq.py``). The
head: absent from the Hugging Face file (or equal to ``shared.weight``) means tied; T5 v1.0 then multiplies the
decoder output by ``d_model ** -0.5`` before it (``scale_decoder_outputs``, our ``tied_head_rescale``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.hf_io import (
    ConversionError,
    check_architecture,
    check_hf_config,
    iter_hf_tensors,
    read_hf_config,
    require_ints,
)
from tencentpretrain.convert.keymap import invert, rename, renamed
from tencentpretrain.convert.seq2seq import LM_HEAD, WORD_EMBEDDING, save_hf_dir, with_aliases, without_aliases
from tencentpretrain.layers.relative_position import MAX_DISTANCE

_ENC, _DEC = "encoder.block.{}.layer.", "decoder.block.{}.layer."
_OURS_ENC, _OURS_DEC = "encoder.transformer.{}.", "decoder.transformer_decoder.{}."


def _attention(hf: str, ours: str) -> dict[str, str]:
    return {f"{hf}.{a}.weight": f"{ours}.{b}" for a, b in
            (("q", "linear_layers.0.weight"), ("k", "linear_layers.1.weight"), ("v", "linear_layers.2.weight"),
             ("o", "final_linear.weight"))}


def _feed_forward(hf: str, ours: str, gated: bool) -> dict[str, str]:
    parts = (("wi_0", "linear_gate"), ("wi_1", "linear_1")) if gated else (("wi", "linear_1"),)
    parts += (("wo", "linear_2"),)
    return {f"{hf}.DenseReluDense.{a}.weight": f"{ours}feed_forward.{b}.weight" for a, b in parts}


def key_map(gated: bool) -> dict[str, str]:
    """``{Hugging Face template: ours}`` for T5 with a gated (v1.1) or dense (v1.0) feed-forward layer."""
    mapping = {
        "shared.weight": WORD_EMBEDDING,
        "lm_head.weight": LM_HEAD,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            "encoder.relative_pos_emb.relative_attention_bias.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            "decoder.self_pos_emb.relative_attention_bias.weight",
        "encoder.final_layer_norm.weight": "encoder.layer_norm.weight",
        "decoder.final_layer_norm.weight": "decoder.layer_norm.weight",
        _ENC + "0.layer_norm.weight": _OURS_ENC + "layer_norm_1.weight",
        _ENC + "1.layer_norm.weight": _OURS_ENC + "layer_norm_2.weight",
        _DEC + "0.layer_norm.weight": _OURS_DEC + "layer_norm_1.weight",
        _DEC + "1.layer_norm.weight": _OURS_DEC + "layer_norm_2.weight",
        _DEC + "2.layer_norm.weight": _OURS_DEC + "layer_norm_3.weight",
    }
    mapping.update(_attention(_ENC + "0.SelfAttention", _OURS_ENC + "self_attn"))
    mapping.update(_attention(_DEC + "0.SelfAttention", _OURS_DEC + "self_attn"))
    mapping.update(_attention(_DEC + "1.EncDecAttention", _OURS_DEC + "context_attn"))
    mapping.update(_feed_forward(_ENC + "1", _OURS_ENC, gated))
    mapping.update(_feed_forward(_DEC + "2", _OURS_DEC, gated))
    return mapping


HF_TO_OURS = {gated: key_map(gated) for gated in (False, True)}
OURS_TO_HF = {gated: invert(mapping) for gated, mapping in HF_TO_OURS.items()}
# Copies of shared.weight, and the cross-attention bias table old checkpoints carry but T5 never reads.
HF_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
              "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")

# The fixed part of every T5 config (TencentPretrain's models/t5*/*_config.json).
T5_ARCHITECTURE = {
    "embedding": ["word"], "tgt_embedding": ["word"], "encoder": "transformer", "decoder": "transformer",
    "target": ["lm"], "mask": "fully_visible", "layernorm_positioning": "pre", "layernorm": "t5",
    "remove_embedding_layernorm": True, "remove_transformer_bias": True, "remove_attention_scale": True,
    "relative_position_embedding": True, "share_embedding": True, "has_lmtarget_bias": False,
}
# feed_forward_proj -> (feed_forward, hidden_act); gated-gelu is the tanh approximation (transformers' gelu_new).
FEED_FORWARDS = {"relu": ("dense", "relu"), "gelu": ("dense", "gelu"), "gated-gelu": ("gated", "gelu_fast"),
                 "gated-relu": ("gated", "relu"), "gated-silu": ("gated", "silu")}


def config_from_hf(hf: dict, tied: bool, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers ``T5Config`` dict; ``tied``: the file has no head of its own."""
    check_hf_config(hf, source, "t5", ("is_decoder",))
    require_ints(hf, source, ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size"))
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARDS:
        raise ConversionError(f"{source}: feed_forward_proj {proj!r} is not supported; known: {list(FEED_FORWARDS)}")
    if hf.get("relative_attention_max_distance", MAX_DISTANCE) != MAX_DISTANCE:
        raise ConversionError(f"{source}: relative_attention_max_distance {hf['relative_attention_max_distance']!r}"
                              f" is not supported (only {MAX_DISTANCE}, TencentPretrain's)")
    rescale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    if rescale and not tied:
        raise ConversionError(f"{source}: scale_decoder_outputs with a head of its own (lm_head.weight differs from "
                              "shared.weight) is not supported: T5 rescales only its tied head")
    feed_forward, act = FEED_FORWARDS[proj]
    heads, head_dim = hf["num_heads"], hf["d_kv"]
    return ModelConfig.from_dict({
        **T5_ARCHITECTURE, "feed_forward": feed_forward, "hidden_act": act,
        "emb_size": hf["d_model"], "hidden_size": hf["d_model"], "feedforward_size": hf["d_ff"], "heads_num": heads,
        "attention_head_size": None if heads * head_dim == hf["d_model"] else head_dim,
        "layers_num": hf["num_layers"], "decoder_layers_num": hf.get("num_decoder_layers") or hf["num_layers"],
        "relative_attention_buckets_num": hf.get("relative_attention_num_buckets", 32),
        "dropout": hf.get("dropout_rate", 0.1), "layernorm_eps": hf.get("layer_norm_epsilon", 1e-6),
        "vocab_size": hf["vocab_size"], "tie_weights": tied, "tied_head_rescale": bool(rescale),
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int) -> dict:
    """A transformers ``T5Config`` dict for our config."""
    check_architecture(config, T5_ARCHITECTURE, "T5")
    proj = next((name for name, kind in FEED_FORWARDS.items() if kind == (config.feed_forward, config.hidden_act)),
                None)
    if proj is None:
        raise ConversionError(f"{config.source or 'config'}: feed_forward {config.feed_forward!r} with hidden_act "
                              f"{config.hidden_act!r} has no T5 feed_forward_proj (known: {list(FEED_FORWARDS)})")
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": config.hidden_size,
        "d_kv": config.head_dim, "d_ff": config.feedforward_size, "num_layers": config.layers_num,
        "num_decoder_layers": config.decoder_layers, "num_heads": config.heads_num,
        "relative_attention_num_buckets": config.relative_attention_buckets_num,
        "relative_attention_max_distance": MAX_DISTANCE, "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.layernorm_eps, "feed_forward_proj": proj, "vocab_size": vocab_size,
        "tie_word_embeddings": config.tie_weights, "scale_decoder_outputs": config.tied_head_rescale,
        "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
    }


def hf_to_ours(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename transformers' T5 tensors to ours, with the names our checkpoints repeat."""
    mapping = HF_TO_OURS[config.feed_forward == "gated"]
    out = {target: tensor.contiguous() for _, target, tensor in renamed(tensors.items(), mapping,
                                                                        "the T5 checkpoint", HF_IGNORED)}
    if config.tie_weights:
        out.pop(LM_HEAD, None)
    return with_aliases(out, config)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our T5 state dict in transformers' names (the head only when untied)."""
    mapping = OURS_TO_HF[config.feed_forward == "gated"]
    out = {}
    for name, tensor in without_aliases(state, config, "T5").items():
        hf_name = rename(name, mapping)
        if hf_name is None:
            raise ConversionError(f"unexpected tensor {name} in the TencentPretrain T5 checkpoint")
        out[hf_name] = tensor
    if config.tie_weights:
        out.pop("lm_head.weight", None)
    return out


def load_hf_t5(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers T5 directory as our config and state dict."""
    tensors = dict(iter_hf_tensors(hf_dir))
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    if shared is None:
        raise ConversionError(f"{hf_dir}: no shared.weight; is it a T5ForConditionalGeneration checkpoint?")
    tied = head is None or torch.equal(head, shared)
    config = config_from_hf(read_hf_config(hf_dir), tied, source=str(Path(hf_dir) / "config.json"))
    return config, hf_to_ours(tensors, config)


def save_hf_t5(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
               max_shard_size: str | int = "5GB", dtype: torch.dtype | None = None) -> None:
    """Write a directory that ``transformers.T5ForConditionalGeneration`` loads; it appears only once complete."""
    hf_config = config_to_hf(config, state[WORD_EMBEDDING].shape[0])
    save_hf_dir(ours_to_hf(state, config), hf_config, out_dir, max_shard_size, dtype)
