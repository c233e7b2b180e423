"""GPT-2 checkpoints: Hugging Face <-> TencentPretrain.

transformers' GPT-2 keeps its projections in ``Conv1D`` layers, stored (in, out): they are transposed, and the fused
query/key/value projection ``c_attn`` is split into our three ``linear_layers`` (and joined on the way back).
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
from tencentpretrain.convert.keymap import fill, invert, match, renamed

_LAYER = "encoder.transformer.{}."
HF_TO_OURS = {
    "transformer.wte.weight": "embedding.word.embedding.weight",
    "transformer.wpe.weight": "embedding.pos.embedding.weight",
    "transformer.h.{}.ln_1.weight": _LAYER + "layer_norm_1.gamma",
    "transformer.h.{}.ln_1.bias": _LAYER + "layer_norm_1.beta",
    "transformer.h.{}.attn.c_attn.weight": _LAYER + "self_attn.linear_layers.{qkv}.weight",
    "transformer.h.{}.attn.c_attn.bias": _LAYER + "self_attn.linear_layers.{qkv}.bias",
    "transformer.h.{}.attn.c_proj.weight": _LAYER + "self_attn.final_linear.weight",
    "transformer.h.{}.attn.c_proj.bias": _LAYER + "self_attn.final_linear.bias",
    "transformer.h.{}.ln_2.weight": _LAYER + "layer_norm_2.gamma",
    "transformer.h.{}.ln_2.bias": _LAYER + "layer_norm_2.beta",
    "transformer.h.{}.mlp.c_fc.weight": _LAYER + "feed_forward.linear_1.weight",
    "transformer.h.{}.mlp.c_fc.bias": _LAYER + "feed_forward.linear_1.bias",
    "transformer.h.{}.mlp.c_proj.weight": _LAYER + "feed_forward.linear_2.weight",
    "transformer.h.{}.mlp.c_proj.bias": _LAYER + "feed_forward.linear_2.bias",
    "transformer.ln_f.weight": "encoder.layer_norm.gamma",
    "transformer.ln_f.bias": "encoder.layer_norm.beta",
    "lm_head.weight": "target.lm.output_layer.weight",
}
OURS_TO_HF = invert(HF_TO_OURS)
FUSED_QKV = "{qkv}"  # one transformers tensor = our q, k and v stacked along the output dimension
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old exports

GPT2_ARCHITECTURE = {
    "embedding": ["word", "pos"], "encoder": "transformer", "target": ["lm"], "mask": "causal",
    "layernorm_positioning": "pre", "layernorm": "normal", "feed_forward": "dense",
    "remove_embedding_layernorm": True, "remove_transformer_bias": False, "data_processor": "lm",
}
ACTIVATIONS = {"gelu_new": "gelu_fast", "gelu_pytorch_tanh": "gelu_fast", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers ``GPT2Config`` dict."""
    check_hf_config(hf, source, "gpt2", ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"))
    require_ints(hf, source, ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size"))
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConversionError(f"{source}: activation_function {act!r} is not supported; known: {list(ACTIVATIONS)}")
    width = hf["n_embd"]
    return ModelConfig.from_dict({
        **GPT2_ARCHITECTURE, "emb_size": width, "hidden_size": width,
        "feedforward_size": hf.get("n_inner") or 4 * width,
        "heads_num": hf["n_head"], "layers_num": hf["n_layer"], "max_seq_length": hf["n_positions"],
        "layernorm_eps": hf.get("layer_norm_epsilon", 1e-5), "hidden_act": ACTIVATIONS[act],
        "dropout": hf.get("resid_pdrop", 0.1), "vocab_size": hf["vocab_size"],
        "tie_weights": bool(hf.get("tie_word_embeddings", True)),
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int, dtype: torch.dtype) -> dict:
    """A transformers ``GPT2Config`` dict for our config."""
    check_architecture(config, GPT2_ARCHITECTURE, "GPT-2")
    act = {"gelu_fast": "gelu_new", "gelu": "gelu", "relu": "relu"}.get(config.hidden_act)
    if act is None:
        raise ConversionError(f"hidden_act {config.hidden_act!r} has no GPT-2 equivalent")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": config.hidden_size,
        "n_inner": config.feedforward_size, "n_head": config.heads_num, "n_layer": config.layers_num,
        "n_positions": config.max_seq_length, "layer_norm_epsilon": config.layernorm_eps,
        "activation_function": act, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "vocab_size": vocab_size, "tie_word_embeddings": config.tie_weights,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": min(50256, vocab_size - 1), "eos_token_id": min(50256, vocab_size - 1),
    }


def hf_to_ours(tensors, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (name, tensor) pairs from transformers' GPT-2 to ours: transpose Conv1D, split c_attn."""
    out = {}
    for template, target, tensor in renamed(tensors, HF_TO_OURS, "the GPT-2 checkpoint", HF_IGNORED):
        if template.endswith(CONV1D):
            tensor = tensor.t()
        if FUSED_QKV in target:
            for i, part in enumerate(tensor.chunk(3, dim=0)):
                out[target.replace(FUSED_QKV, str(i))] = part.contiguous()
        else:
            out[target] = tensor.contiguous()
    return with_tied_head(out, config)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our GPT-2 state dict in transformers' names: join q/k/v into c_attn, transpose to Conv1D."""
    out = {}
    for name, tensor in state.items():
        fused = name.replace(".linear_layers.0.", f".linear_layers.{FUSED_QKV}.")
        if ".linear_layers.1." in name or ".linear_layers.2." in name:
            continue  # joined with linear_layers.0
        found = match(fused, OURS_TO_HF)
        if found is None:
            raise ConversionError(f"unexpected tensor {name} in the TencentPretrain GPT-2 checkpoint")
        template, layer = found
        hf_name = fill(OURS_TO_HF[template], layer)
        if FUSED_QKV in template:
            tensor = torch.cat([state[fused.replace(FUSED_QKV, str(i))] for i in range(3)], dim=0)
        out[hf_name] = tensor.t().contiguous() if hf_name.endswith(CONV1D) else tensor
    if config.tie_weights:
        out.pop("lm_head.weight", None)
    return out


def load_hf_gpt2(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers GPT-2 directory as our config and state dict."""
    config = config_from_hf(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
    tensors = ((_with_prefix(name), tensor) for name, tensor in iter_hf_tensors(hf_dir))
    return config, hf_to_ours(tensors, config)


def _with_prefix(name: str) -> str:
    """Old GPT-2 exports (``GPT2Model``) lack the ``transformer.`` prefix."""
    return name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"


def save_hf_gpt2(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                 max_shard_size: str | int = "5GB", dtype: torch.dtype | None = None) -> None:
    """Write a directory that ``transformers.GPT2LMHeadModel.from_pretrained`` loads (appears only once complete)."""
    vocab = state["embedding.word.embedding.weight"].shape[0]
    dtype = dtype or state["embedding.word.embedding.weight"].dtype
    hf_state = {k: v.to(dtype) for k, v in ours_to_hf(state, config).items()}
    with atomic_dir(out_dir) as tmp:
        save_sharded_safetensors(hf_state, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(config_to_hf(config, vocab, dtype), indent=2) + "\n")
