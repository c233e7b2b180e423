"""Meta's original LLaMA checkpoints (``params.json`` + ``consolidated.NN.pth``) -> TencentPretrain.

The larger models come as several model-parallel files: each tensor is split along the dimension its parallel layer
splits (``SHARD_DIM``) and the norms are replicated. The files are memory-mapped and each tensor is joined across
them. Meta's rotary layout is ours, so nothing is permuted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tencentpretrain.checkpoint import load_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.hf_io import ConversionError
from tencentpretrain.convert.keymap import match, rename
from tencentpretrain.convert.llama import LLAMA_ARCHITECTURE
from tencentpretrain.jsonfile import read_json_object

META_TO_OURS = {
    "tok_embeddings.weight": "embedding.word.embedding.weight",
    "layers.{}.attention.wq.weight": "encoder.transformer.{}.self_attn.linear_layers.0.weight",
    "layers.{}.attention.wk.weight": "encoder.transformer.{}.self_attn.linear_layers.1.weight",
    "layers.{}.attention.wv.weight": "encoder.transformer.{}.self_attn.linear_layers.2.weight",
    "layers.{}.attention.wo.weight": "encoder.transformer.{}.self_attn.final_linear.weight",
    "layers.{}.feed_forward.w1.weight": "encoder.transformer.{}.feed_forward.linear_gate.weight",
    "layers.{}.feed_forward.w3.weight": "encoder.transformer.{}.feed_forward.linear_1.weight",
    "layers.{}.feed_forward.w2.weight": "encoder.transformer.{}.feed_forward.linear_2.weight",
    "layers.{}.attention_norm.weight": "encoder.transformer.{}.layer_norm_1.weight",
    "layers.{}.ffn_norm.weight": "encoder.transformer.{}.layer_norm_2.weight",
    "norm.weight": "encoder.layer_norm.weight",
    "output.weight": "target.lm.output_layer.weight",
}
# Dimension along which model-parallel files split each tensor (None: replicated).
SHARD_DIM = {
    "tok_embeddings.weight": 1, "output.weight": 0, "norm.weight": None,
    "layers.{}.attention.wq.weight": 0, "layers.{}.attention.wk.weight": 0, "layers.{}.attention.wv.weight": 0,
    "layers.{}.attention.wo.weight": 1, "layers.{}.feed_forward.w1.weight": 0, "layers.{}.feed_forward.w3.weight": 0,
    "layers.{}.feed_forward.w2.weight": 1, "layers.{}.attention_norm.weight": None, "layers.{}.ffn_norm.weight": None,
}
META_IGNORED = ("rope.freqs",)


def meta_files(path: str | Path) -> tuple[Path, list[Path]]:
    """``params.json`` and the ordered ``consolidated.*.pth`` files of a Meta checkpoint directory (or of the
    directory holding a given consolidated file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    params = folder / "params.json"
    if not params.is_file():
        raise ConversionError(f"{folder}: no params.json beside the consolidated checkpoint")
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"{folder}: no consolidated.*.pth files")
    return params, shards


def config_from_meta(params: dict, vocab_size: int, feedforward_size: int, source: str) -> ModelConfig:
    """Our ModelConfig from Meta's ``params.json`` (vocab and FFN sizes come from the weights)."""
    heads = params["n_heads"]
    kv = params.get("n_kv_heads") or heads
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE, "emb_size": params["dim"], "hidden_size": params["dim"],
        "feedforward_size": feedforward_size, "heads_num": heads, "local_kv_heads_num": kv if kv != heads else None,
        "layers_num": params["n_layers"], "max_seq_length": params.get("max_seq_len", 2048),
        "layernorm_eps": params.get("norm_eps", 1e-6), "rope_theta": float(params.get("rope_theta", 10000.0)),
        "vocab_size": vocab_size,
    }, source=source)


def load_meta_llama(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a Meta checkpoint (one or several model-parallel files) as our config and state dict."""
    params_path, shard_paths = meta_files(path)
    params = read_json_object(params_path, ConversionError, what="Meta's params.json")
    missing = [key for key in ("dim", "n_heads", "n_layers") if not isinstance(params.get(key), int)]
    if missing:
        raise ConversionError(f"{params_path}: missing or non-integer {', '.join(missing)}")
    shards = [load_state_dict(p) for p in shard_paths]  # memory-mapped; a corrupt file is a CheckpointError
    state = {}
    for name in shards[0]:
        if name in META_IGNORED:
            continue
        found = match(name, META_TO_OURS)
        if found is None:
            raise ConversionError(f"{shard_paths[0]}: unexpected tensor {name}")
        missing = [str(p) for p, shard in zip(shard_paths, shards) if name not in shard]
        if missing:
            raise ConversionError(f"tensor {name} is missing from {', '.join(missing)}")
        dim = SHARD_DIM[found[0]]
        parts = [shard[name] for shard in shards]
        state[rename(name, META_TO_OURS)] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim)
    vocab = state["embedding.word.embedding.weight"].shape[0]
    ffn = state["encoder.transformer.0.feed_forward.linear_gate.weight"].shape[0]
    return config_from_meta(params, vocab, ffn, str(params_path)), state
