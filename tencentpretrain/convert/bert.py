"""BERT checkpoints: Hugging Face (``BertForPreTraining``, ``BertForMaskedLM``) <-> TencentPretrain.

One key map, used both ways. Two things are not a renaming: Hugging Face's token-type embedding has a row per type
(0 and 1) and ours a row per segment with row 0 for padding, so a zero row is put in front on the way in and dropped
on the way out; and the vocabulary bias is stored twice, ``cls.predictions.decoder.bias`` (what the forward pass adds;
transformers 5 keeps it apart from the other when the head is untied) and ``cls.predictions.bias``: the first is read
(the second where it is the only one) and both are written.
Our config names the targets: ``["mlm", "sp"]`` is ``BertForPreTraining``, ``["mlm"]`` is ``BertForMaskedLM``.
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
from tencentpretrain.convert.keymap import invert, rename, renamed

_HF_LAYER = "bert.encoder.layer.{}."
_LAYER = "encoder.transformer.{}."
HF_TO_OURS = {
    "bert.embeddings.word_embeddings.weight": "embedding.word.embedding.weight",
    "bert.embeddings.position_embeddings.weight": "embedding.pos.embedding.weight",
    "bert.embeddings.token_type_embeddings.weight": "embedding.seg.embedding.weight",
    "bert.embeddings.LayerNorm.weight": "embedding.layer_norm.gamma",
    "bert.embeddings.LayerNorm.bias": "embedding.layer_norm.beta",
    _HF_LAYER + "attention.self.query.weight": _LAYER + "self_attn.linear_layers.0.weight",
    _HF_LAYER + "attention.self.query.bias": _LAYER + "self_attn.linear_layers.0.bias",
    _HF_LAYER + "attention.self.key.weight": _LAYER + "self_attn.linear_layers.1.weight",
    _HF_LAYER + "attention.self.key.bias": _LAYER + "self_attn.linear_layers.1.bias",
    _HF_LAYER + "attention.self.value.weight": _LAYER + "self_attn.linear_layers.2.weight",
    _HF_LAYER + "attention.self.value.bias": _LAYER + "self_attn.linear_layers.2.bias",
    _HF_LAYER + "attention.output.dense.weight": _LAYER + "self_attn.final_linear.weight",
    _HF_LAYER + "attention.output.dense.bias": _LAYER + "self_attn.final_linear.bias",
    _HF_LAYER + "attention.output.LayerNorm.weight": _LAYER + "layer_norm_1.gamma",
    _HF_LAYER + "attention.output.LayerNorm.bias": _LAYER + "layer_norm_1.beta",
    _HF_LAYER + "intermediate.dense.weight": _LAYER + "feed_forward.linear_1.weight",
    _HF_LAYER + "intermediate.dense.bias": _LAYER + "feed_forward.linear_1.bias",
    _HF_LAYER + "output.dense.weight": _LAYER + "feed_forward.linear_2.weight",
    _HF_LAYER + "output.dense.bias": _LAYER + "feed_forward.linear_2.bias",
    _HF_LAYER + "output.LayerNorm.weight": _LAYER + "layer_norm_2.gamma",
    _HF_LAYER + "output.LayerNorm.bias": _LAYER + "layer_norm_2.beta",
    "bert.pooler.dense.weight": "target.sp.linear_1.weight",
    "bert.pooler.dense.bias": "target.sp.linear_1.bias",
    "cls.seq_relationship.weight": "target.sp.linear_2.weight",
    "cls.seq_relationship.bias": "target.sp.linear_2.bias",
    "cls.predictions.transform.dense.weight": "target.mlm.linear_1.weight",
    "cls.predictions.transform.dense.bias": "target.mlm.linear_1.bias",
    "cls.predictions.transform.LayerNorm.weight": "target.mlm.layer_norm.gamma",
    "cls.predictions.transform.LayerNorm.bias": "target.mlm.layer_norm.beta",
    "cls.predictions.decoder.weight": "target.mlm.linear_2.weight",
    "cls.predictions.decoder.bias": "target.mlm.linear_2.bias",
}
OLD_BIAS = "cls.predictions.bias"  # the other copy of cls.predictions.decoder.bias
OURS_TO_HF = invert(HF_TO_OURS)
SEGMENT_EMBEDDING = "embedding.seg.embedding.weight"
HF_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")

# The fixed part of every BERT config (TencentPretrain's models/bert/*_config.json).
BERT_ARCHITECTURE = {
    "embedding": ["word", "pos", "seg"], "encoder": "transformer", "mask": "fully_visible",
    "layernorm_positioning": "post", "layernorm": "normal", "feed_forward": "dense",
    "remove_embedding_layernorm": False, "remove_transformer_bias": False, "remove_attention_scale": False,
    "rotary_position_embedding": False,
}
CLASSES = {"BertForPreTraining": ["mlm", "sp"], "BertForMaskedLM": ["mlm"]}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_fast", "gelu_pytorch_tanh": "gelu_fast", "relu": "relu"}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a transformers ``BertConfig`` dict; its ``architectures`` picks the targets."""
    check_hf_config(hf, source, "bert", ("is_decoder", "add_cross_attention"))
    require_ints(hf, source, ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                              "max_position_embeddings", "vocab_size"))
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported "
                              "(only absolute)")
    if hf.get("type_vocab_size", 2) != 2:
        raise ConversionError(f"{source}: type_vocab_size {hf['type_vocab_size']!r}: our segment embedding has two "
                              "segments (TencentPretrain's seg)")
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"{source}: hidden_act {act!r} is not supported; known: {list(ACTIVATIONS)}")
    kinds = [name for name in hf.get("architectures") or ["BertForPreTraining"] if name in CLASSES]
    if not kinds:
        raise ConversionError(f"{source}: architectures {hf.get('architectures')!r}: converted are "
                              f"{', '.join(CLASSES)}")
    return ModelConfig.from_dict({
        **BERT_ARCHITECTURE, "target": CLASSES[kinds[0]],
        "emb_size": hf["hidden_size"], "hidden_size": hf["hidden_size"], "feedforward_size": hf["intermediate_size"],
        "heads_num": hf["num_attention_heads"], "layers_num": hf["num_hidden_layers"],
        "max_seq_length": hf["max_position_embeddings"], "layernorm_eps": hf.get("layer_norm_eps", 1e-12),
        "hidden_act": ACTIVATIONS[act], "dropout": hf.get("hidden_dropout_prob", 0.1), "vocab_size": hf["vocab_size"],
        "tie_weights": bool(hf.get("tie_word_embeddings", True)),
    }, source=source)


def config_to_hf(config: ModelConfig, vocab_size: int, dtype: torch.dtype) -> dict:
    """A transformers ``BertConfig`` dict for our config (``BertForPreTraining`` with the sp target)."""
    check_architecture(config, BERT_ARCHITECTURE, "BERT")
    kind = next((name for name, targets in CLASSES.items() if list(config.target) == targets), None)
    if kind is None:
        raise ConversionError(f"{config.source or 'config'}: target {list(config.target)} is not a BERT model "
                              "(BERT has [\"mlm\", \"sp\"] or [\"mlm\"])")
    act = {"gelu": "gelu", "gelu_fast": "gelu_new", "relu": "relu"}.get(config.hidden_act)
    if act is None:
        raise ConversionError(f"hidden_act {config.hidden_act!r} has no BERT equivalent")
    return {
        "architectures": [kind], "model_type": "bert", "hidden_size": config.hidden_size,
        "intermediate_size": config.feedforward_size, "num_attention_heads": config.heads_num,
        "num_hidden_layers": config.layers_num, "max_position_embeddings": config.max_seq_length,
        "layer_norm_eps": config.layernorm_eps, "hidden_act": act, "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout, "type_vocab_size": 2, "vocab_size": vocab_size,
        "tie_word_embeddings": config.tie_weights, "position_embedding_type": "absolute", "pad_token_id": 0,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_to_ours(tensors, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (name, tensor) pairs from transformers' BERT to ours; the token types get a padding row in front."""
    tensors = dict(tensors)
    bias = tensors.pop(OLD_BIAS, None)
    if bias is not None:
        tensors.setdefault("cls.predictions.decoder.bias", bias)
    out = {}
    for _, target, tensor in renamed(tensors.items(), HF_TO_OURS, "the BERT checkpoint", HF_IGNORED):
        if target == SEGMENT_EMBEDDING:
            tensor = torch.cat([tensor.new_zeros(1, tensor.shape[1]), tensor])  # (3, hidden): row 0 is padding
        if target.startswith("target.") and target.split(".")[1] not in config.target:
            raise ConversionError(f"the BERT checkpoint has {target.split('.')[1]} weights, but its config's "
                                  f"architectures say {list(config.target)}")
        out[target] = tensor.contiguous()
    return with_tied_head(out, config)


def ours_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our BERT state dict in transformers' names; the segment embedding's padding row is dropped."""
    out = {}
    for name, tensor in state.items():
        hf_name = rename(name, OURS_TO_HF)
        if hf_name is None:
            raise ConversionError(f"unexpected tensor {name} in the TencentPretrain BERT checkpoint")
        out[hf_name] = tensor[1:].contiguous() if name == SEGMENT_EMBEDDING else tensor
    if "cls.predictions.decoder.bias" in out:
        out[OLD_BIAS] = out["cls.predictions.decoder.bias"].clone()  # a separate tensor: safetensors refuses shared
    if config.tie_weights:
        out.pop("cls.predictions.decoder.weight", None)
    return out


def _with_prefix(name: str) -> str:
    """A bare ``BertModel`` export lacks the ``bert.`` prefix."""
    return name if name.startswith(("bert.", "cls.")) else f"bert.{name}"


def load_hf_bert(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a transformers BERT directory as our config and state dict."""
    config = config_from_hf(read_hf_config(hf_dir), source=str(Path(hf_dir) / "config.json"))
    tensors = ((_with_prefix(name), tensor) for name, tensor in iter_hf_tensors(hf_dir))
    return config, hf_to_ours(tensors, config)


def save_hf_bert(state: dict[str, torch.Tensor], config: ModelConfig, out_dir: str | Path,
                 max_shard_size: str | int = "5GB", dtype: torch.dtype | None = None,
                 vocab_path: str | Path | None = None) -> None:
    """Write a directory that ``transformers.BertForPreTraining`` (or ``BertForMaskedLM``) loads; it appears only
    once complete. With ``vocab_path`` (a WordPiece ``vocab.txt`` or its directory) the tokenizer goes with it:
    the vocabulary and a ``tokenizer_config.json`` (:func:`hf_tokenizer_config`)."""
    vocab = state["embedding.word.embedding.weight"].shape[0]
    dtype = dtype or state["embedding.word.embedding.weight"].dtype
    hf_config = config_to_hf(config, vocab, dtype)
    hf_state = {k: v.to(dtype) for k, v in ours_to_hf(state, config).items()}
    tokenizer = None
    if vocab_path is not None:
        from tencentpretrain.tokenizers.wordpiece import WordPieceTokenizer

        tokenizer = WordPieceTokenizer(vocab_path)
    with atomic_dir(out_dir) as tmp:
        save_sharded_safetensors(hf_state, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if tokenizer is not None:
            (tmp / "vocab.txt").write_bytes(tokenizer.file.read_bytes())
            tokenizer_config = hf_tokenizer_config(tokenizer, config.max_seq_length)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def hf_tokenizer_config(tokenizer, max_length: int) -> dict:
    """``tokenizer_config.json`` for transformers' ``BertTokenizer`` that reads text as ``tokenizer`` (our
    WordPiece tokenizer) does: its casing, accents and CJK rule, its special tokens, ``max_length`` positions."""
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
              "tokenize_chinese_chars": tokenizer.split_cjk, "strip_accents": tokenizer.accents,
              "model_max_length": max_length}
    for name, token_id in (("cls", tokenizer.cls_id), ("sep", tokenizer.sep_id), ("pad", tokenizer.pad_id),
                           ("unk", tokenizer.unk_id), ("mask", tokenizer.mask_id)):
        if token_id is not None:
            config[f"{name}_token"] = tokenizer.pieces[token_id]
    extra = tokenizer.config.get("additional_special_tokens")
    if extra:
        config["additional_special_tokens"] = extra
    return config
