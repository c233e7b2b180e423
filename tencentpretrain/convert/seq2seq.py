"""What the T5 and BART conversions share: the names a TencentPretrain encoder-decoder checkpoint repeats, and the
writing of a Hugging Face directory.

Our state dict (and TencentPretrain's) holds some tensors under several names: with ``share_embedding`` the
decoder's word embedding ``tgt_embedding.word.embedding.weight`` is the encoder's, with ``tie_weights`` the head
``target.lm.output_layer.weight`` is that embedding too, and T5's encoder bias table
``encoder.relative_pos_emb.relative_attention_bias.weight`` is repeated per layer as
``encoder.transformer.{i}.relative_pos_emb.relative_attention_bias.weight`` (the names TencentPretrain's own
encoder reads; its converter writes only the first). Reading, :func:`with_aliases` adds the copies; writing,
:func:`without_aliases` checks that they agree and drops them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_dir
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.hf_io import ConversionError, save_sharded_safetensors
from tencentpretrain.model import TGT_WORD_EMBEDDING, VOCAB_HEADS

WORD_EMBEDDING = "embedding.word.embedding.weight"
LM_HEAD = VOCAB_HEADS["lm"]
RELATIVE_TABLE = "encoder.relative_pos_emb.relative_attention_bias.weight"
LAYER_TABLE = "encoder.transformer.{}.relative_pos_emb.relative_attention_bias.weight"


def aliases(config: ModelConfig) -> dict[str, str]:
    """``{repeated name: the name it repeats}`` for this config's checkpoints."""
    out = {}
    if config.share_embedding:
        out[TGT_WORD_EMBEDDING] = WORD_EMBEDDING
    if config.tie_weights:
        out[LM_HEAD] = TGT_WORD_EMBEDDING
    if config.relative_position_embedding:
        out.update({LAYER_TABLE.format(i): RELATIVE_TABLE for i in range(config.layers_num)})
    return out


def with_aliases(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """``state`` with every repeated name present, each the very tensor it repeats."""
    for alias, name in aliases(config).items():
        source = state.get(name, state.get(WORD_EMBEDDING) if name == TGT_WORD_EMBEDDING else None)
        if alias not in state and source is not None:
            state[alias] = source
    return state


def without_aliases(state: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """``state`` without the repeated names; ConversionError names a copy that differs from its original."""
    state = dict(state)
    for alias, name in aliases(config).items():
        copy = state.pop(alias, None)
        original = state.get(name, state.get(WORD_EMBEDDING) if name == TGT_WORD_EMBEDDING else None)
        if copy is not None and original is not None and copy is not original and not torch.equal(copy, original):
            raise ConversionError(f"the TencentPretrain {family} checkpoint's {alias} differs from {name}, but the "
                                  f"config shares them (a {family} model has one tensor for both)")
    return state


def save_hf_dir(hf_state: dict[str, torch.Tensor], hf_config: dict, out_dir: str | Path,
                max_shard_size: str | int, dtype: torch.dtype | None) -> None:
    """Write safetensors shards and ``config.json`` into ``out_dir``, which appears only once complete."""
    dtype = dtype or next(iter(hf_state.values())).dtype
    hf_state = {name: tensor.to(dtype).contiguous() for name, tensor in hf_state.items()}
    hf_config = {**hf_config, "torch_dtype": str(dtype).removeprefix("torch.")}
    with atomic_dir(out_dir) as tmp:
        save_sharded_safetensors(hf_state, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
