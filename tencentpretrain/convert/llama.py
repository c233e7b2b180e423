"""LLaMA / Llama-2 checkpoints: Hugging Face <-> TencentPretrain, through one key map used both ways.

The only non-renaming step is the rotary layout: Meta and TencentPretrain rotate interleaved feature pairs, transformers
rotates halves, so the query and key projection rows are permuted (``permute_rotary``) with head counts taken from the
config (the key projection has ``kv_heads_num`` heads under grouped-query attention).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_dir
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.hf_io import (
    ConversionError,
    check_architecture,
    check_hf_config,
    iter_hf_tensors,
    read_hf_config,
    require_ints,
    save_sharded_safetensors,
    with_tied_head,
)
from tencentpretrain.convert.keymap import invert, renamed

HF_TO_OURS = {
    "model.embed_tokens.weight": "embedding.word.embedding.weight",
    "model.layers.{}.self_attn.q_proj.weight": "encoder.transformer.{}.self_attn.linear_layers.0.weight",
    "model.layers.{}.self_attn.k_proj.weight": "encoder.transformer.{}.self_attn.linear_layers.1.weight",
    "model.layers.{}.self_attn.v_proj.weight": "encoder.transformer.{}.self_attn.linear_layers.2.weight",
    "model.layers.{}.self_attn.o_proj.weight": "encoder.transformer.{}.self_attn.final_linear.weight",
    "model.layers.{}.mlp.gate_proj.weight": "encoder.transformer.{}.feed_forward.linear_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "encoder.transformer.{}.feed_forward.linear_1.weight",
    "model.layers.{}.mlp.down_proj.weight": "encoder.transformer.{}.feed_forward.linear_2.weight",
    "model.layers.{}.input_layernorm.weight": "encoder.transformer.{}.layer_norm_1.weight",
    "model.layers.{}.post_attention_layernorm.weight": "encoder.transformer.{}.layer_norm_2.weight",
    "model.norm.weight": "encoder.layer_norm.weight",
    "lm_head.weight": "target.lm.output_layer.weight",
}
OURS_TO_HF = invert(HF_TO_OURS)
QUERY, KEY = "model.layers.{}.self_attn.q_proj.weight", "model.layers.{}.self_attn.k_proj.weight"
HF_IGNORED = ("rotary_emb.inv_freq",)  # buffers some old exports saved

# The fixed part of every LLaMA config: GPT-2's parts plus pre-norm RMSNorm, SwiGLU and rotary embeddings.
LLAMA_ARCHITECTURE = {
    "embedding": ["word"], "encoder": "transformer", "target": ["lm"], "mask": "causal",
    "layernorm_positioning": "pre", "layernorm": "rms", "feed_forward": "gated", "hidden_act": "silu",
    "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
    "dropout": 0.0, "data_processor": "lm",
}


def permute_rotary(weight: torch.Tensor, heads: int, to_hf: bool) -> torch.Tensor:
    """Reorder q/k projection rows between interleaved pairs (Meta, ours) and halves (transformers).

    Args:
        weight: (heads * head_dim, in_features) projection weight.
        heads: heads in this projection (``heads_num`` for q, ``kv_heads_num`` for k).
        to_hf: True for ours -> transformers, False for the way back.
    """
    rows, cols = weight.shape
    half = rows // heads // 2
    if to_hf:  # per head: (pair, 2) -> (2, pair)
        return weight.reshape(heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)
    return weight.reshape(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ConversionError(f"rope scaling {scaling} is not supported (only plain rotary embeddings)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers ``LlamaConfig`` dict."""
    check_hf_config(hf, source, "llama", ("attention_bias", "mlp_bias"))
    require_ints(hf, source, ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                              "vocab_size"))
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ConversionError(f"{source}: head_dim {head_dim} * heads {heads} != hidden_size {hf['hidden_size']}")
    kv = hf.get("num_key_value_heads") or heads
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE,
        "emb_size": hf["hidden_size"], "hidden_size": hf["hidden_size"],
        "feedforward_size": hf["intermediate_size"], "heads_num": heads,
        "local_kv_heads_num": kv if kv != heads else None, "layers_num": hf["num_hidden_layers"],
        "max_seq_length": hf.get("max_position_embeddings", 2048), "layernorm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": _rope_theta(hf), "vocab_size": hf["vocab_size"],
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int, dtype: torch.dtype, bos_id: int = 1, eos_id: int = 2) -> dict:
    """A transformers ``LlamaConfig`` dict for our config."""
    check_architecture(config, LLAMA_ARCHITECTURE, "LLaMA", free=("dropout", "data_processor"))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": config.hidden_size, "intermediate_size": config.feedforward_size,
        "num_attention_heads": config.heads_num, "num_key_value_heads": config.kv_heads_num,
        "num_hidden_layers": config.layers_num, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length, "rms_norm_eps": config.layernorm_eps,
        "rope_theta": config.rope_theta, "vocab_size": vocab_size, "tie_word_embeddings": config.tie_weights,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def _rotary(hf_template: str, tensor: torch.Tensor, config: ModelConfig, to_hf: bool) -> torch.Tensor:
    """Permute the q and k projections between the rotary layouts; other tensors pass unchanged."""
    if hf_template == QUERY:
        return permute_rotary(tensor, config.heads_num, to_hf)
    if hf_template == KEY:
        return permute_rotary(tensor, config.kv_heads_num, to_hf)
    return tensor


def hf_to_ours(tensors, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (name, tensor) pairs from transformers to ours, un-permuting q and k."""
    out = {name: _rotary(template, tensor, config, to_hf=False)
           for template, name, tensor in renamed(tensors, HF_TO_OURS, "the Hugging Face checkpoint", HF_IGNORED)}
    return with_tied_head(out, config)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our state dict to transformers' names, permuting q and k."""
    out = {name: _rotary(OURS_TO_HF[template], tensor, config, to_hf=True)
           for template, name, tensor in renamed(state.items(), OURS_TO_HF, "the TencentPretrain checkpoint")}
    if config.tie_weights:
        out.pop("lm_head.weight", None)
    return out


def load_hf_llama(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers LLaMA directory (single or sharded, safetensors or bin) as our config and state dict."""
    config = config_from_hf(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
    return config, hf_to_ours(iter_hf_tensors(hf_dir), config)


def save_hf_llama(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                  spm_model_path: str | Path | None = None, max_shard_size: str | int = "5GB",
                  dtype: torch.dtype | None = None, chat_template: str | None = None) -> None:
    """Write a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Contents: config.json, generation_config.json, model.safetensors (or shards with an index) and, given a
    SentencePiece model, tokenizer.model with tokenizer_config.json (holding ``chat_template``, a Jinja text, when
    given) and special_tokens_map.json. The directory appears only once complete.
    """
    vocab = state["embedding.word.embedding.weight"].shape[0]
    dtype = dtype or state["embedding.word.embedding.weight"].dtype
    hf_state = {k: v.to(dtype) for k, v in ours_to_hf(state, config).items()}
    special = {"bos": 1, "eos": 2, "unk": 0}
    if spm_model_path is not None:
        from tencentpretrain.tokenizers import SentencePieceTokenizer

        tokenizer = SentencePieceTokenizer(spm_model_path)
        special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "unk": tokenizer.unk_id}
    with atomic_dir(out_dir) as tmp:
        save_sharded_safetensors(hf_state, tmp, max_shard_size)
        _write_json(tmp / "config.json", config_to_hf(config, vocab, dtype, special["bos"], special["eos"]))
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": special["bos"], "eos_token_id": special["eos"], "pad_token_id": special["unk"]})
        if spm_model_path is not None:
            write_hf_tokenizer(tmp, tokenizer, chat_template)


def write_hf_tokenizer(out_dir: Path, tokenizer, chat_template: str | None = None) -> None:
    """Write ``tokenizer.model``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``out_dir``, the
    files with which ``transformers.AutoTokenizer`` loads a ``SentencePieceTokenizer``'s model as LLaMA's."""
    import shutil

    if Path(tokenizer.model_path).resolve() != (out_dir / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer.model_path, out_dir / "tokenizer.model")
    pieces = {name: tokenizer.id_to_piece(getattr(tokenizer, f"{name}_id")) for name in ("bos", "eos", "unk")}
    _write_json(out_dir / "special_tokens_map.json", {f"{k}_token": v for k, v in pieces.items()})
    _write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        **{f"{k}_token": v for k, v in pieces.items()}, "pad_token": None,
        **({"chat_template": chat_template} if chat_template else {}),
    })


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
