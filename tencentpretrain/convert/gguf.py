"""LLaMA checkpoints -> GGUF, the file llama.cpp runs, through the ``gguf`` package llama.cpp maintains; and back.

One key map, used both ways, renames our tensors to llama.cpp's. No rotary permutation is needed: llama.cpp's
``llama`` architecture rotates adjacent feature pairs (its "normal" rope mode), which is Meta's layout and ours;
llama.cpp's own converter permutes transformers' q/k rows back to that layout, as ``convert/llama.py`` does when it
reads a Hugging Face directory.

Tensors are read lazily (a memory-mapped ``.bin``, ``safetensors`` slices) and written one at a time after the header,
so converting takes about one tensor of memory. q8_0 and q4_0 are quantised by ``generation/weights/q8.py`` and
``q4.py`` (ggml's reference arithmetic, the quantisers ``--quant q8_0`` and ``--quant q4_0`` decode with;
tested equal to ``gguf.quants``). Both store blocks of 32 weights with one scale; norms stay f32, and under q4_0
the output projection (or the tied embedding that serves as it) is kept in q8_0, as llama.cpp's quantiser keeps it
in higher precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tencentpretrain.checkpoint import LM_HEAD, WORD_EMBEDDING, atomic_path, check_state_dict, load_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.gguf_vocab import Vocabulary
from tencentpretrain.convert.hf_io import check_architecture, read_hf_config, weight_shards
from tencentpretrain.convert.keymap import ConversionError, invert, match, rename
from tencentpretrain.convert.llama import (
    HF_IGNORED,
    HF_TO_OURS,
    KEY,
    LLAMA_ARCHITECTURE,
    QUERY,
    config_from_hf,
    in_hf_layout,
    permute_rotary,
)
from tencentpretrain.generation.weights import q4, q8
from tencentpretrain.model import build_model

ARCH = "llama"
_LAYER = "encoder.transformer.{}."
GGUF_TO_OURS = {
    "token_embd.weight": WORD_EMBEDDING,
    "blk.{}.attn_norm.weight": _LAYER + "layer_norm_1.weight",
    "blk.{}.attn_q.weight": _LAYER + "self_attn.linear_layers.0.weight",
    "blk.{}.attn_k.weight": _LAYER + "self_attn.linear_layers.1.weight",
    "blk.{}.attn_v.weight": _LAYER + "self_attn.linear_layers.2.weight",
    "blk.{}.attn_output.weight": _LAYER + "self_attn.final_linear.weight",
    "blk.{}.ffn_norm.weight": _LAYER + "layer_norm_2.weight",
    "blk.{}.ffn_gate.weight": _LAYER + "feed_forward.linear_gate.weight",
    "blk.{}.ffn_up.weight": _LAYER + "feed_forward.linear_1.weight",
    "blk.{}.ffn_down.weight": _LAYER + "feed_forward.linear_2.weight",
    "output_norm.weight": "encoder.layer_norm.weight",
    "output.weight": LM_HEAD,
    **{f"blk.{{}}.attn_{p}.bias": _LAYER + f"self_attn.linear_layers.{i}.bias" for i, p in enumerate("qkv")},  # qwen2
    "blk.{}.attn_q_norm.weight": _LAYER + "self_attn.q_norm.weight",  # qwen3
    "blk.{}.attn_k_norm.weight": _LAYER + "self_attn.k_norm.weight",
}
OURS_TO_GGUF = invert(GGUF_TO_OURS)
# llama.cpp's qwen2 and qwen3 rotate the two halves of each head (its "neox" rope mode), transformers' layout:
# their q/k rows (weights, biases) and per-head norms are written as transformers has them (convert/llama.py's
# in_hf_layout; the llama architecture takes ours).
NEOX_ARCHS = ("qwen2", "qwen3")
OUTTYPES = ("f32", "f16", "q8_0", "q4_0")


def gguf_arch(config: ModelConfig) -> str:
    """The llama.cpp architecture of a config: qwen3 (per-head q/k norms), qwen2 (q/k/v biases), else llama.

    Raises ConversionError for what llama.cpp's architectures do not compute as we do (dynamic NTK scaling, a
    sliding window shorter than the context, both q/k norms and biases)."""
    if config.qk_norm and config.qkv_bias:
        raise ConversionError("q/k norms together with q/k/v biases: no llama.cpp architecture has both")
    if config.sliding_window is not None and config.sliding_window < config.max_seq_length:
        raise ConversionError(f"sliding_window {config.sliding_window} < max_seq_length {config.max_seq_length}: "
                              "llama.cpp's llama architecture attends to the whole context; set sliding_window to "
                              "null (Mistral v0.2 and later) or max_seq_length to the window")
    if config.rope_scaling is not None and config.rope_scaling.rope_type == "dynamic":
        raise ConversionError("rope_scaling 'dynamic' (NTK) has no GGUF form; llama.cpp computes linear, yarn and "
                              "llama3 (rope_freqs) scaling")
    return "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else ARCH


@dataclass(frozen=True)
class LazyTensor:
    """A checkpoint tensor not read yet: its shape, and how to read it."""

    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]


def read_checkpoint(model_path: str | Path, config_path: str | Path | None) -> tuple[ModelConfig, dict]:
    """Our config and ``{our name: LazyTensor}`` of a TencentPretrain ``.bin``/``.safetensors`` (with its config)
    or of a Hugging Face LLaMA directory (whose config.json is used; q/k permuted back to our layout on reading)."""
    model_path = Path(model_path)
    if model_path.is_dir():
        config = config_from_hf(read_hf_config(model_path), source=str(model_path / "config.json"))
        tensors = {}
        for shard in weight_shards(model_path):
            for name, shape, load in _shard_tensors(shard):
                if not name.endswith(HF_IGNORED):
                    tensors.update(_from_hf(name, shape, load, config))
    else:
        if config_path is None:
            raise ConversionError(f"--input_model_path {model_path}: a checkpoint file needs --config_path")
        config = ModelConfig.from_json(config_path)
        tensors = {name: LazyTensor(shape, load) for name, shape, load in _shard_tensors(model_path)}
    config.require_causal("the GGUF export (llama.cpp)")
    check_architecture(config, LLAMA_ARCHITECTURE, "LLaMA", free=("dropout", "data_processor"))
    _check_shapes(config, tensors, str(model_path))
    return config, tensors


def _shard_tensors(path: Path) -> Iterator[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]]:
    """(name, shape, loader) of each tensor of one file; ``load_state_dict`` memory-maps both formats, so pages
    are read only when a tensor is used."""
    for name, tensor in load_state_dict(path).items():
        yield name, tuple(tensor.shape), partial(lambda t: t, tensor)


def _from_hf(name: str, shape: tuple[int, ...], load, config: ModelConfig) -> dict[str, LazyTensor]:
    found = match(name, HF_TO_OURS)
    if found is None:
        raise ConversionError(f"unexpected tensor {name} in the Hugging Face checkpoint")
    template, _ = found
    heads = {QUERY: config.heads_num, KEY: config.kv_heads_num}.get(template)
    if heads is not None:
        load = partial(lambda f, h: permute_rotary(f(), h, to_hf=False), load, heads)
    return {rename(name, HF_TO_OURS): LazyTensor(shape, load)}


def _check_shapes(config: ModelConfig, tensors: dict[str, LazyTensor], source: str) -> None:
    if WORD_EMBEDDING not in tensors:
        raise ConversionError(f"{source}: no {WORD_EMBEDDING}; is it a LLaMA checkpoint?")
    with torch.device("meta"):
        model = build_model(config, tensors[WORD_EMBEDDING].shape[0])
        check_state_dict(model, {k: torch.empty(t.shape) for k, t in tensors.items()}, source)


def tensor_type(name: str, shape: tuple[int, ...], outtype: str, tied: bool):
    """The GGML type of a GGUF tensor under ``outtype``: norms f32; q8_0/q4_0 where rows split into blocks of 32
    (else f16); under q4_0 the output projection (the embedding when tied) q8_0."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    if len(shape) == 1 or outtype == "f32":
        return T.F32
    qtype = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[outtype]
    if qtype == T.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        qtype = T.Q8_0
    if shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        return T.F16
    return qtype


def encode(tensor: torch.Tensor, qtype) -> np.ndarray:
    """The bytes llama.cpp reads for ``tensor`` in ``qtype`` (an array of the GGUF element type or of uint8): q8_0
    and q4_0 through ``generation/weights/q8.py``'s and ``q4.py``'s
    quantisers (the ones the q8_0 and q4_0 engines hold, so
    the two agree bit for bit), the others through the ``gguf`` package's."""
    from gguf import GGMLQuantizationType, quants

    array = tensor.detach().to(torch.float32).contiguous().numpy()
    if qtype == GGMLQuantizationType.Q8_0:
        return q8.gguf_bytes(*q8.quantize_blocks(array))
    if qtype == GGMLQuantizationType.Q4_0:
        return q4.gguf_bytes(*q4.quantize_blocks(array))
    return quants.quantize(array, qtype)


def gguf_plan(config: ModelConfig, tensors: dict[str, LazyTensor], outtype: str) -> list[tuple[str, str, object]]:
    """(GGUF name, our name, GGML type) of each tensor, in the order written (embedding, blocks, norm, output)."""
    plan = []
    for ours, lazy in tensors.items():
        if config.tie_weights and ours == LM_HEAD:
            continue  # llama.cpp uses token_embd as the output when there is no output tensor
        name = rename(ours, OURS_TO_GGUF)
        if name is None:
            raise ConversionError(f"tensor {ours} has no llama.cpp name")
        plan.append((name, ours, tensor_type(name, lazy.shape, outtype, config.tie_weights)))
    return sorted(plan, key=lambda row: _position(row[0]))


def _position(gguf_name: str) -> tuple[int, int]:
    template, layer = match(gguf_name, GGUF_TO_OURS)
    order = list(GGUF_TO_OURS).index(template)
    return (int(layer), order) if layer is not None else (-1 if order == 0 else 1 << 30, order)


def write_gguf(path: str | Path, config: ModelConfig, tensors: dict[str, LazyTensor], vocab: Vocabulary,
               outtype: str = "f16", chat_template: str | None = None, name: str | None = None,
               on_tensor: Callable[[str, object], None] | None = None) -> None:
    """Write a GGUF file llama.cpp loads as a ``llama``, ``qwen2`` or ``qwen3`` model (``gguf_arch``), atomically,
    one tensor in memory at a time.

    Args:
        path: the ``.gguf`` file to write.
        config: our model config (architecture metadata).
        tensors: ``{our name: LazyTensor}`` (from ``read_checkpoint``).
        vocab: the tokenizer (from ``gguf_vocab.read_vocabulary``), one token per embedding row.
        outtype: one of ``OUTTYPES``.
        chat_template: Jinja chat template (``gguf_vocab.chat_template``), or None for none.
        name: ``general.name`` (default: the file name without suffix).
        on_tensor: called with (GGUF name, GGML type) after each tensor is written.
    """
    import gguf

    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    rows = tensors[WORD_EMBEDDING].shape[0]
    if len(vocab.tokens) != rows:
        raise ConversionError(f"the vocabulary has {len(vocab.tokens)} tokens but the model {rows} embedding rows")
    arch = gguf_arch(config)
    plan = gguf_plan(config, tensors, outtype)
    freqs = rope_freqs(config)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        _add_model_metadata(writer, config, rows, outtype, name or path.stem)
        _add_vocabulary(writer, vocab, chat_template)
        if freqs is not None:
            writer.add_tensor_info("rope_freqs.weight", freqs.shape, np.dtype(np.float32), freqs.nbytes)
        for gguf_name, ours, qtype in plan:
            shape = gguf.quant_shape_to_byte_shape(tensors[ours].shape, qtype)
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.uint8), int(np.prod(shape)), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        if freqs is not None:
            writer.write_tensor_data(freqs)
        for gguf_name, ours, qtype in plan:
            tensor = tensors[ours].load()
            if arch in NEOX_ARCHS:
                tensor = in_hf_layout(ours, tensor, config)
            writer.write_tensor_data(encode(tensor, qtype))
            if on_tensor is not None:
                on_tensor(gguf_name, qtype)
        writer.close()


def rope_freqs(config: ModelConfig) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` tensor for Llama-3.1's scaling: per frequency, the factor it divides the
    unscaled one by (head_dim / 2 float32 values); None for other configs."""
    if config.rope_scaling is None or config.rope_scaling.rope_type != "llama3":
        return None
    from tencentpretrain.layers.rope_scaling import default_inv_freq, inv_frequencies

    scaled, _ = inv_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    return (default_inv_freq(config.head_dim, config.rope_theta) / scaled).numpy().astype(np.float32)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def _add_model_metadata(writer, config: ModelConfig, vocab_rows: int, outtype: str, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[outtype]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(vocab_rows)
    writer.add_context_length(config.max_seq_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.layers_num)
    writer.add_feed_forward_length(config.feedforward_size)
    writer.add_head_count(config.heads_num)
    writer.add_head_count_kv(config.kv_heads_num)
    if config.head_dim != config.hidden_size // config.heads_num:  # Qwen3's explicit head size
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.layernorm_eps)
    scaling = config.rope_scaling
    if scaling is not None and scaling.rope_type in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType[scaling.rope_type.upper()])
        writer.add_rope_scaling_factor(scaling.factor)
        if scaling.rope_type == "yarn":
            writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings)


def _add_vocabulary(writer, vocab: Vocabulary, chat_template: str | None) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.special["bos"])
    writer.add_eos_token_id(vocab.special["eos"])
    if "unk" in vocab.special:
        writer.add_unk_token_id(vocab.special["unk"])
    if "pad" in vocab.special:
        writer.add_pad_token_id(vocab.special["pad"])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_template:
        writer.add_chat_template(chat_template)


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], list[str]]:
    """Our config and state dict from a ``llama`` GGUF file, with the names of tensors that were dequantised.

    f32 and f16 tensors come back exactly; quantised ones (q8_0, q4_0, ...) are dequantised to f32 by the ``gguf``
    package, which is lossy. Raises ConversionError for another architecture or an unknown tensor.
    """
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    reader = _open_gguf(path)
    config = config_from_gguf(reader, str(path))
    state, lossy = {}, []
    for tensor in reader.tensors:
        ours = rename(tensor.name, GGUF_TO_OURS)
        if ours is None:
            raise ConversionError(f"{path}: tensor {tensor.name} has no TencentPretrain name")
        data = tensor.data
        if tensor.tensor_type not in (T.F32, T.F16):
            data = quants.dequantize(data, tensor.tensor_type)
            lossy.append(tensor.name)
        state[ours] = torch.from_numpy(np.array(data).reshape([int(n) for n in reversed(tensor.shape)]))
    return config, state, lossy


def _open_gguf(path: str | Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"--input_model_path {path}: file not found")
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as err:
        raise ConversionError(f"--input_model_path {path}: not a GGUF file ({err})") from None


def _field(reader, key: str, source: str, default=None):
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise ConversionError(f"{source}: no {key} in the GGUF metadata")
        return default
    return field.contents()


def config_from_gguf(reader, source: str) -> ModelConfig:
    """Our ModelConfig from the metadata of a ``llama`` GGUF file (tied when it has no ``output.weight``)."""
    arch = _field(reader, "general.architecture", source)
    if arch != ARCH:
        raise ConversionError(f"{source}: architecture {arch!r} is not {ARCH}")
    key = partial(lambda k, default=None: _field(reader, f"{ARCH}.{k}", source, default))
    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    if int(key("rope.dimension_count", hidden // heads)) != hidden // heads:
        raise ConversionError(f"{source}: partial rotary embeddings are not supported")
    kv = int(key("attention.head_count_kv", heads))
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE, "emb_size": hidden, "hidden_size": hidden, "heads_num": heads,
        "local_kv_heads_num": kv if kv != heads else None, "layers_num": int(key("block_count")),
        "feedforward_size": int(key("feed_forward_length")), "max_seq_length": int(key("context_length")),
        "layernorm_eps": _float32(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32(key("rope.freq_base", 10000.0)),
        "tie_weights": not any(t.name == "output.weight" for t in reader.tensors),
    }, source=source)


def _float32(value) -> float:
    """The shortest decimal of a float32 metadata value (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))
