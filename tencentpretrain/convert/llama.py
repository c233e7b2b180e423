"""LLaMA-shaped checkpoints: Hugging Face <-> TencentPretrain, through one key map per family used both ways.

Families (``HF_FAMILIES``, by transformers' ``model_type``): ``llama`` (LLaMA, Llama-2, Llama-3.x), ``mistral``
(sliding window), ``qwen2`` (Qwen2 / Qwen2.5: query/key/value biases) and ``qwen3`` (per-head query/key RMSNorm,
explicit head size). The only non-renaming step is the rotary layout: Meta and TencentPretrain rotate interleaved
feature pairs, transformers rotates halves, so the query and key rows (weights, biases, and the per-head norm weights)
are permuted (``permute_rotary``) with head counts taken from the config (the key projection has ``kv_heads_num``
heads under grouped-query attention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_dir
from tencentpretrain.config import ConfigError, ModelConfig, RopeScaling
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
from tencentpretrain.convert.keymap import invert, match, renamed
from tencentpretrain.registry import ROPE_SCALINGS, Registry

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
QKV_BIAS = {  # Qwen2: biases on q/k/v, none on o_proj
    f"model.layers.{{}}.self_attn.{hf}_proj.bias": f"encoder.transformer.{{}}.self_attn.linear_layers.{i}.bias"
    for i, hf in enumerate("qkv")
}
QK_NORM = {  # Qwen3: RMSNorm over each query/key head
    "model.layers.{}.self_attn.q_norm.weight": "encoder.transformer.{}.self_attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "encoder.transformer.{}.self_attn.k_norm.weight",
}
QUERY, KEY = "model.layers.{}.self_attn.q_proj.weight", "model.layers.{}.self_attn.k_proj.weight"
QUERY_ROWS = (QUERY, "model.layers.{}.self_attn.q_proj.bias")  # rows in the query heads' rotary layout
KEY_ROWS = (KEY, "model.layers.{}.self_attn.k_proj.bias")
HEAD_NORMS = tuple(QK_NORM)  # one head's features, in the rotary layout
HF_IGNORED = ("rotary_emb.inv_freq",)  # buffers some old exports saved

# The fixed part of every LLaMA config: GPT-2's parts plus pre-norm RMSNorm, SwiGLU and rotary embeddings.
LLAMA_ARCHITECTURE = {
    "embedding": ["word"], "encoder": "transformer", "target": ["lm"], "mask": "causal",
    "layernorm_positioning": "pre", "layernorm": "rms", "feed_forward": "gated", "hidden_act": "silu",
    "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
    "dropout": 0.0, "data_processor": "lm",
}


@dataclass(frozen=True)
class Family:
    """One transformers architecture of the LLaMA shape.

    Attributes:
        architecture: the class name in config.json's ``architectures``.
        key_map: ``{hf_template: our_template}``, inverted for the way back.
        unsupported: transformers config flags that, when true, ask for parts we do not have.
        padded_vocab: the embedding has more rows than the tokenizer has tokens (Qwen pads to a multiple of 128).
    """

    architecture: str
    key_map: dict[str, str]
    unsupported: tuple[str, ...] = ()
    padded_vocab: bool = False

    @property
    def inverse(self) -> dict[str, str]:
        return invert(self.key_map)


HF_FAMILIES = Registry("Hugging Face model_type")
HF_FAMILIES.register("llama")(Family("LlamaForCausalLM", HF_TO_OURS, ("attention_bias", "mlp_bias")))
HF_FAMILIES.register("mistral")(Family("MistralForCausalLM", HF_TO_OURS))
HF_FAMILIES.register("qwen2")(Family("Qwen2ForCausalLM", {**HF_TO_OURS, **QKV_BIAS}, ("use_sliding_window",),
                                     padded_vocab=True))
HF_FAMILIES.register("qwen3")(Family("Qwen3ForCausalLM", {**HF_TO_OURS, **QK_NORM},
                                     ("attention_bias", "use_sliding_window"), padded_vocab=True))


def permute_rotary(weight: torch.Tensor, heads: int, to_hf: bool) -> torch.Tensor:
    """Reorder q/k projection rows between interleaved pairs (Meta, ours) and halves (transformers).

    Args:
        weight: (heads * head_dim, in_features) projection weight, or its (heads * head_dim,) bias, or a
            (head_dim,) per-head norm weight with ``heads`` 1.
        heads: heads in this projection (``heads_num`` for q, ``kv_heads_num`` for k).
        to_hf: True for ours -> transformers, False for the way back.
    """
    rows, cols = weight.shape[0], weight[0].numel()
    half = rows // heads // 2
    if to_hf:  # per head: (pair, 2) -> (2, pair)
        return weight.reshape(heads, half, 2, cols).transpose(1, 2).reshape(weight.shape)
    return weight.reshape(heads, 2, half, cols).transpose(1, 2).reshape(weight.shape)


def family_of_hf(hf: dict, source: str) -> str:
    """The family of a transformers config, from ``architectures`` (else ``model_type``); unknown ones raise."""
    architectures = hf.get("architectures") or []
    by_class = {HF_FAMILIES.get(name).architecture: name for name in HF_FAMILIES.names()}
    for architecture in architectures:
        if architecture not in by_class:
            raise ConversionError(f"{source}: architecture {architecture!r} is not supported; supported: "
                                  f"{', '.join(sorted(by_class))}")
    name = by_class[architectures[0]] if architectures else hf.get("model_type", "llama")
    if name not in HF_FAMILIES:
        raise ConversionError(f"{source}: model_type {name!r} is not supported; supported: "
                              f"{', '.join(HF_FAMILIES.names())}")
    return name


def family_of(config: ModelConfig) -> str:
    """The transformers family our config exports as: the one whose parts it uses (LLaMA without any)."""
    if config.qk_norm:
        return "qwen3"
    if config.qkv_bias:
        return "qwen2"
    return "mistral" if config.sliding_window is not None else "llama"


def _rope_from_hf(hf: dict, source: str) -> tuple[float, RopeScaling | None]:
    """rope_theta and our rope_scaling from transformers' ``rope_parameters`` (v5) or ``rope_scaling`` (v4)."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta") or 10000.0))
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    partial = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConversionError(f"{source}: partial_rotary_factor {partial} is not supported (rotary on every feature)")
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALINGS:
        raise ConversionError(f"{source}: rope_scaling rope_type {kind!r} is not supported; supported: default, "
                              f"{', '.join(ROPE_SCALINGS.names())}")
    longest = hf.get("max_position_embeddings")
    if kind == "dynamic":  # transformers measures the growth from max_position_embeddings
        params["original_max_position_embeddings"] = longest
    elif kind in ("llama3", "yarn"):
        params["original_max_position_embeddings"] = hf.get("original_max_position_embeddings") or \
            params.get("original_max_position_embeddings") or longest
    if kind == "yarn" and params.get("factor") is None and longest:
        params["factor"] = longest / params["original_max_position_embeddings"]
    try:
        return theta, RopeScaling.from_dict({"rope_type": kind, **params}, f"{source}: ")
    except ConfigError as err:
        raise ConversionError(str(err)) from None


def _rope_to_hf(config: ModelConfig) -> dict:
    if config.rope_scaling is None:
        return {"rope_theta": config.rope_theta}
    scaling = config.rope_scaling.to_dict()
    if scaling["rope_type"] == "dynamic":
        scaling.pop("original_max_position_embeddings")  # transformers takes max_position_embeddings
    return {"rope_theta": config.rope_theta, "rope_scaling": scaling}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers Llama, Mistral, Qwen2 or Qwen3 config dict."""
    name = family_of_hf(hf, source)
    family = HF_FAMILIES.get(name)
    check_hf_config(hf, source, name, family.unsupported)
    require_ints(hf, source, ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                              "vocab_size"))
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim") or hidden // heads
    if name in ("llama", "mistral") and head_dim * heads != hidden and hf.get("head_dim") is None:
        raise ConversionError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    kv = hf.get("num_key_value_heads") or heads
    theta, scaling = _rope_from_hf(hf, source)
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE,
        "emb_size": hidden, "hidden_size": hidden, "feedforward_size": hf["intermediate_size"], "heads_num": heads,
        "local_kv_heads_num": kv if kv != heads else None, "layers_num": hf["num_hidden_layers"],
        "attention_head_size": head_dim if head_dim * heads != hidden else None,
        "max_seq_length": hf.get("max_position_embeddings", 2048), "layernorm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": theta, "rope_scaling": scaling, "vocab_size": hf["vocab_size"],
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "qkv_bias": name == "qwen2", "qk_norm": name == "qwen3",
        "sliding_window": hf.get("sliding_window") if name == "mistral" else None,
        "allow_padded_vocab": family.padded_vocab,
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int, dtype: torch.dtype, bos_id: int = 1, eos_id: int = 2) -> dict:
    """A transformers config dict (``LlamaConfig``, ``MistralConfig``, ``Qwen2Config`` or ``Qwen3Config``)."""
    check_architecture(config, LLAMA_ARCHITECTURE, "LLaMA", free=("dropout", "data_processor"))
    name = family_of(config)
    extra = {
        "llama": {"attention_bias": False, "mlp_bias": False},
        "mistral": {"sliding_window": config.sliding_window},
        "qwen2": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.layers_num},
        "qwen3": {"attention_bias": False, "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": config.layers_num},
    }[name]
    return {
        "architectures": [HF_FAMILIES.get(name).architecture], "model_type": name,
        "hidden_size": config.hidden_size, "intermediate_size": config.feedforward_size,
        "num_attention_heads": config.heads_num, "num_key_value_heads": config.kv_heads_num,
        "num_hidden_layers": config.layers_num, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_length, "rms_norm_eps": config.layernorm_eps,
        **_rope_to_hf(config), "vocab_size": vocab_size, "tie_word_embeddings": config.tie_weights,
        "hidden_act": "silu", **extra, "initializer_range": 0.02,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def _rotary(hf_template: str, tensor: torch.Tensor, config: ModelConfig, to_hf: bool) -> torch.Tensor:
    """Permute the query/key rows (and the per-head norms) between the rotary layouts; other tensors pass."""
    if hf_template in QUERY_ROWS:
        return permute_rotary(tensor, config.heads_num, to_hf)
    if hf_template in KEY_ROWS:
        return permute_rotary(tensor, config.kv_heads_num, to_hf)
    if hf_template in HEAD_NORMS:
        return permute_rotary(tensor, 1, to_hf)
    return tensor


def hf_to_ours(tensors, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (name, tensor) pairs from transformers to ours, un-permuting q and k."""
    key_map = HF_FAMILIES.get(family_of(config)).key_map
    out = {name: _rotary(template, tensor, config, to_hf=False)
           for template, name, tensor in renamed(tensors, key_map, "the Hugging Face checkpoint", HF_IGNORED)}
    return with_tied_head(out, config)


def in_hf_layout(name: str, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """One of our tensors (``name``) in transformers' rotary layout: the q/k rows and per-head norms permuted,
    anything else as it is (what ``ours_to_hf`` does to each tensor; llama.cpp's neox architectures take it too)."""
    inverse = HF_FAMILIES.get(family_of(config)).inverse
    found = match(name, inverse)
    return tensor if found is None else _rotary(inverse[found[0]], tensor, config, to_hf=True)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our state dict to transformers' names, permuting q and k."""
    inverse = HF_FAMILIES.get(family_of(config)).inverse
    out = {name: _rotary(inverse[template], tensor, config, to_hf=True)
           for template, name, tensor in renamed(state.items(), inverse, "the TencentPretrain checkpoint")}
    if config.tie_weights:
        out.pop("lm_head.weight", None)
    return out


def load_hf_llama(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers Llama / Mistral / Qwen2 / Qwen3 directory (single or sharded, safetensors or bin) as our
    config and state dict."""
    config = config_from_hf(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
    return config, hf_to_ours(iter_hf_tensors(hf_dir), config)


def save_hf_llama(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                  spm_model_path: str | Path | None = None, max_shard_size: str | int = "5GB",
                  dtype: torch.dtype | None = None, chat_template: str | None = None,
                  tokenizer_path: str | Path | None = None) -> None:
    """Write a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Contents: config.json, generation_config.json, model.safetensors (or shards with an index) and the tokenizer:
    given a SentencePiece model, tokenizer.model with tokenizer_config.json (holding ``chat_template``, a Jinja
    text, when given) and special_tokens_map.json; given a Hugging Face tokenizer (``tokenizer_path``), its
    tokenizer.json with its tokenizer_config.json (``chat_template`` replaced when given) and special tokens map.
    generation_config.json lists every end token of the tokenizer as ``eos_token_id``. The directory appears only
    once complete.
    """
    vocab = state["embedding.word.embedding.weight"].shape[0]
    dtype = dtype or state["embedding.word.embedding.weight"].dtype
    hf_state = {k: v.to(dtype) for k, v in ours_to_hf(state, config).items()}
    if spm_model_path is not None and tokenizer_path is not None:
        raise ValueError("give a SentencePiece model or a Hugging Face tokenizer, not both")
    tokenizer = None
    if spm_model_path is not None or tokenizer_path is not None:
        from tencentpretrain.tokenizers import open_tokenizer

        tokenizer = open_tokenizer(spm_model_path, tokenizer_path)
    special = {"bos": 1, "eos": 2, "pad": 0} if tokenizer is None else \
        {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    ends = [special["eos"]] if tokenizer is None else list(tokenizer.end_ids)
    with atomic_dir(out_dir) as tmp:
        save_sharded_safetensors(hf_state, tmp, max_shard_size)
        _write_json(tmp / "config.json", config_to_hf(config, vocab, dtype, special["bos"], special["eos"]))
        _write_json(tmp / "generation_config.json", {"bos_token_id": special["bos"],
                                                    "eos_token_id": ends[0] if len(ends) == 1 else ends,
                                                    "pad_token_id": special["pad"]})
        if spm_model_path is not None:
            write_hf_tokenizer(tmp, tokenizer, chat_template)
        elif tokenizer is not None:
            copy_hf_tokenizer(tmp, tokenizer, chat_template)


def copy_hf_tokenizer(out_dir: Path, tokenizer, chat_template: str | None = None) -> None:
    """Copy a Hugging Face tokenizer's files into ``out_dir`` (tokenizer.json, or GPT-2's vocab.json and
    merges.txt, with tokenizer_config.json and special_tokens_map.json), ``chat_template`` written into its
    tokenizer_config.json when given."""
    import shutil

    from tencentpretrain.jsonfile import read_json_object

    files = [tokenizer.file] + ([tokenizer.file.parent / "merges.txt"] if tokenizer.file.name == "vocab.json" else [])
    for path in files + [p for p in tokenizer.config_files if p.name != "tokenizer_config.json"]:
        shutil.copyfile(path, out_dir / path.name)
    config_file = tokenizer.file.parent / "tokenizer_config.json"
    config = read_json_object(config_file, ConversionError) if config_file.is_file() else \
        {"tokenizer_class": "PreTrainedTokenizerFast",
         **{f"{name}_token": tokenizer.id_to_piece(i) for name, i in tokenizer.special_tokens.items() if i is not None}}
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(out_dir / "tokenizer_config.json", config)


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
