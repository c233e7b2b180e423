"""BART checkpoints: Hugging Face ``BartForConditionalGeneration`` <-> TencentPretrain.

One key map, used both ways. Two things are not a renaming: Hugging Face's learned positions are looked up at
``position + 2`` (its table has ``max_position_embeddings + 2`` rows, the first two never read), ours at
``position``, so the first two rows are dropped on the way in and written as zeros on the way out (as
TencentPretrain's converter does); and the vocabulary bias ``final_logits_bias`` (1, vocab) is our head's bias
``target.lm.output_layer.bias`` (vocab,). Encoder, decoder and head share one word embedding (``model.shared``).
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

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding's offset
_ENC, _DEC = "model.encoder.layers.{}.", "model.decoder.layers.{}."
_OURS_ENC, _OURS_DEC = "encoder.transformer.{}.", "decoder.transformer_decoder.{}."


def _linears(hf: str, ours: str, pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {f"{hf}{a}.{kind}": f"{ours}{b}.{kind}" for a, b in pairs for kind in ("weight", "bias")}


def _norms(hf: str, ours: str, pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {f"{hf}{a}.{x}": f"{ours}{b}.{y}" for a, b in pairs for x, y in (("weight", "gamma"), ("bias", "beta"))}


def _attention(hf: str, ours: str) -> tuple[tuple[str, str], ...]:
    pairs = (("q", "linear_layers.0"), ("k", "linear_layers.1"), ("v", "linear_layers.2"), ("out", "final_linear"))
    return tuple((f"{hf}.{a}_proj", f"{ours}.{b}") for a, b in pairs)


HF_TO_OURS = {
    "model.shared.weight": WORD_EMBEDDING,
    "model.encoder.embed_positions.weight": "embedding.pos.embedding.weight",
    "model.decoder.embed_positions.weight": "tgt_embedding.pos.embedding.weight",
    "lm_head.weight": LM_HEAD,
    "final_logits_bias": "target.lm.output_layer.bias",
    **_norms("model.", "", (("encoder.layernorm_embedding", "embedding.layer_norm"),
                            ("decoder.layernorm_embedding", "tgt_embedding.layer_norm"))),
    **_linears(_ENC, _OURS_ENC, _attention("self_attn", "self_attn") + (("fc1", "feed_forward.linear_1"),
                                                                        ("fc2", "feed_forward.linear_2"))),
    **_norms(_ENC, _OURS_ENC, (("self_attn_layer_norm", "layer_norm_1"), ("final_layer_norm", "layer_norm_2"))),
    **_linears(_DEC, _OURS_DEC, _attention("self_attn", "self_attn") + _attention("encoder_attn", "context_attn")
               + (("fc1", "feed_forward.linear_1"), ("fc2", "feed_forward.linear_2"))),
    **_norms(_DEC, _OURS_DEC, (("self_attn_layer_norm", "layer_norm_1"), ("encoder_attn_layer_norm", "layer_norm_2"),
                               ("final_layer_norm", "layer_norm_3"))),
}
OURS_TO_HF = invert(HF_TO_OURS)
HF_IGNORED = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")  # copies of model.shared
POSITIONS = ("embedding.pos.embedding.weight", "tgt_embedding.pos.embedding.weight")

# The fixed part of every BART config (TencentPretrain's models/bart/*_config.json).
BART_ARCHITECTURE = {
    "embedding": ["word", "pos"], "tgt_embedding": ["word", "pos"], "encoder": "transformer",
    "decoder": "transformer", "target": ["lm"], "mask": "fully_visible", "layernorm_positioning": "post",
    "layernorm": "normal", "feed_forward": "dense", "remove_embedding_layernorm": False,
    "remove_transformer_bias": False, "remove_attention_scale": False, "relative_position_embedding": False,
    "rotary_position_embedding": False, "share_embedding": True, "has_lmtarget_bias": True,
}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_fast", "relu": "relu", "silu": "silu"}
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which BART's layers use


def _equal_sides(hf: dict, source: str) -> None:
    """Our encoder and decoder share the heads and feed-forward width."""
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(dec, hf[enc]) != hf[enc]:
            raise ConversionError(f"{source}: {enc} {hf[enc]} differs from {dec} {hf[dec]}; our decoder has the "
                                  "encoder's heads and feed-forward width")


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers ``BartConfig`` dict."""
    check_hf_config(hf, source, "bart", ("scale_embedding", "add_bias_logits", "normalize_before",
                                                "add_final_layer_norm"))
    require_ints(hf, source, ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                              "encoder_ffn_dim", "max_position_embeddings", "vocab_size"))
    _equal_sides(hf, source)
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"{source}: activation_function {act!r} is not supported; known: {list(ACTIVATIONS)}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ConversionError(f"{source}: tie_word_embeddings false is not supported (BART's head is model.shared)")
    return ModelConfig.from_dict({
        **BART_ARCHITECTURE, "hidden_act": ACTIVATIONS[act], "emb_size": hf["d_model"], "hidden_size": hf["d_model"],
        "feedforward_size": hf["encoder_ffn_dim"], "heads_num": hf["encoder_attention_heads"],
        "layers_num": hf["encoder_layers"], "decoder_layers_num": hf["decoder_layers"],
        "max_seq_length": hf["max_position_embeddings"], "dropout": hf.get("dropout", 0.1),
        "layernorm_eps": LAYER_NORM_EPS, "vocab_size": hf["vocab_size"], "tie_weights": True,
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int) -> dict:
    """A transformers ``BartConfig`` dict for our config."""
    check_architecture(config, {**BART_ARCHITECTURE, "tie_weights": True}, "BART")
    act = {ours: theirs for theirs, ours in ACTIVATIONS.items()}.get(config.hidden_act)
    if act is None:
        raise ConversionError(f"hidden_act {config.hidden_act!r} has no BART equivalent")
    heads, ffn, layers = config.heads_num, config.feedforward_size, config.layers_num
    return {
        "architectures": ["BartForConditionalGeneration"], "model_type": "bart", "d_model": config.hidden_size,
        "encoder_layers": layers, "decoder_layers": config.decoder_layers, "encoder_attention_heads": heads,
        "decoder_attention_heads": heads, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn,
        "max_position_embeddings": config.max_seq_length, "activation_function": act, "dropout": config.dropout,
        "attention_dropout": 0.0, "activation_dropout": 0.0, "scale_embedding": False, "vocab_size": vocab_size,
        "tie_word_embeddings": True, "is_encoder_decoder": True, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, "decoder_start_token_id": 2, "forced_eos_token_id": 2,
    }


def hf_to_ours(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename transformers' BART tensors to ours; positions lose their two offset rows, the bias its batch axis."""
    out = {}
    for _, target, tensor in renamed(tensors.items(), HF_TO_OURS, "the BART checkpoint", HF_IGNORED):
        if target in POSITIONS:
            tensor = tensor[POSITION_OFFSET:]  # (max_seq_length, hidden)
        elif target == "target.lm.output_layer.bias":
            tensor = tensor.reshape(-1)  # (vocab,)
        out[target] = tensor.contiguous()
    out.pop(LM_HEAD, None)  # tied: the word embedding itself
    out.setdefault("target.lm.output_layer.bias", torch.zeros_like(out[WORD_EMBEDDING][:, 0]))
    return with_aliases(out, config)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our BART state dict in transformers' names; positions get two zero rows in front, the bias a batch axis."""
    out = {}
    for name, tensor in without_aliases(state, config, "BART").items():
        hf_name = rename(name, OURS_TO_HF)
        if hf_name is None:
            raise ConversionError(f"unexpected tensor {name} in the TencentPretrain BART checkpoint")
        if name in POSITIONS:
            tensor = torch.cat([tensor.new_zeros(POSITION_OFFSET, tensor.shape[1]), tensor])
        elif name == "target.lm.output_layer.bias":
            tensor = tensor[None]  # (1, vocab)
        out[hf_name] = tensor
    return out


def load_hf_bart(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers BART directory as our config and state dict."""
    config = config_from_hf(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
    tensors = dict(iter_hf_tensors(hf_dir))
    if "model.shared.weight" not in tensors and "model.encoder.embed_tokens.weight" in tensors:
        tensors["model.shared.weight"] = tensors["model.encoder.embed_tokens.weight"]
    return config, hf_to_ours(tensors, config)


def save_hf_bart(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                 max_shard_size: str | int = "5GB", dtype: torch.dtype | None = None) -> None:
    """Write a directory that ``transformers.BartForConditionalGeneration`` loads; it appears only once complete."""
    hf_config = config_to_hf(config, state[WORD_EMBEDDING].shape[0])
    save_hf_dir(ours_to_hf(state, config), hf_config, out_dir, max_shard_size, dtype)
