"""Reading and writing Hugging Face checkpoint directories, one shard at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from tencentpretrain.checkpoint import load_state_dict, safetensors_error
from tencentpretrain.convert.keymap import ConversionError  # noqa: F401  (re-exported)
from tencentpretrain.jsonfile import read_json_object

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def with_tied_head(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Add the vocabulary head as the word embedding itself when the config ties them and the checkpoint left it
    out."""
    from tencentpretrain.model import vocab_head

    head = vocab_head(config)
    if config.tie_weights and head not in state:
        state[head] = state["embedding.word.embedding.weight"]
    return state


def check_hf_config(hf: dict, source: str, model_type: str, unsupported: tuple[str, ...]) -> None:
    """Refuse a transformers config of another model type or with a flag set that our parts do not implement."""
    if hf.get("model_type", model_type) != model_type:
        raise ConversionError(f"{source}: model_type {hf.get('model_type')!r} is not {model_type}")
    for flag in unsupported:
        if hf.get(flag):
            raise ConversionError(f"{source}: {flag}=true is not supported for {model_type} conversion")


def require_ints(hf: dict, source: str, keys: tuple[str, ...]) -> None:
    """Refuse a transformers config that lacks one of ``keys`` or has a non-integer there."""
    bad = [key for key in keys if not isinstance(hf.get(key), int) or isinstance(hf.get(key), bool)
           or hf[key] <= 0]
    if bad:
        raise ConversionError(f"{source}: missing or non-positive-integer {', '.join(bad)}; is it the config.json "
                              "of a Hugging Face model?")


def check_architecture(config, fixed: dict, family: str, free: tuple[str, ...] = ("data_processor",)) -> None:
    """Refuse a config whose fixed keys (all of ``fixed`` but ``free``) differ from the family's architecture."""
    for key, value in fixed.items():
        ours = getattr(config, key)
        if key not in free and (list(ours) if isinstance(ours, tuple) else ours) != value:
            raise ConversionError(f"{config.source or 'config'}: {key}={ours!r} is not a {family} architecture "
                                  f"({family} has {value!r})")


def read_hf_config(hf_dir: str | Path) -> dict:
    """The ``config.json`` of a Hugging Face model directory."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: no config.json; pass a Hugging Face model directory")
    return read_json_object(path, ConversionError, what="a Hugging Face model config")


def weight_shards(hf_dir: str | Path) -> list[Path]:
    """The weight files of a directory: single file or the shards listed by an index, safetensors first."""
    hf_dir = Path(hf_dir)
    for single in WEIGHT_FILES:
        index = hf_dir / f"{single}.index.json"
        if index.is_file():
            weight_map = read_json_object(index, ConversionError, what="a weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ConversionError(f"{index}: not a weight index (no \"weight_map\" of tensor -> file name)")
            shards = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise ConversionError(f"{index} lists shards that do not exist: {', '.join(missing)}")
            return shards
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    raise ConversionError(f"{hf_dir}: no model.safetensors, pytorch_model.bin or an index of their shards")


def iter_shard_tensors(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one shard; .bin shards are memory-mapped, not read whole."""
    if shard.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            f = safe_open(str(shard), framework="pt")
        except SafetensorError as err:
            raise safetensors_error(shard, err) from None
        with f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:
        yield from load_state_dict(shard).items()  # memory-mapped; a corrupt file is a CheckpointError


def iter_hf_tensors(hf_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a Hugging Face directory, shard after shard."""
    for shard in weight_shards(hf_dir):
        yield from iter_shard_tensors(shard)


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def save_sharded_safetensors(state: dict[str, torch.Tensor], out_dir: Path, max_shard_size: str | int = "5GB") -> None:
    """Write ``state`` as ``model.safetensors`` or as shards with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
