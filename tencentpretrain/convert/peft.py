"""LoRA adapters between our format and PEFT's, through the LLaMA key map used both ways.

Ours: one file (``lora.bin``/``.safetensors``) of ``<module>.lora_A`` (rank, in) and ``<module>.lora_B`` (out, rank)
factors plus the tensors trained in full, with ``lora.lora.json`` beside it. PEFT's (what ``PeftModel.from_pretrained``,
LLaMA-Factory and vLLM load): a directory of ``adapter_config.json`` and ``adapter_model.safetensors`` holding
``base_model.model.<hf module>.lora_A.weight`` / ``.lora_B.weight`` and, for ``modules_to_save``,
``base_model.model.<hf tensor>``. Module names are the Hugging Face model's, from ``convert/llama.py``'s map; the
output rows of the query and key factors (``lora_B``) are permuted between the rotary layouts as the weights are.
Both scale the update by ``lora_alpha / r`` (PEFT's ``use_rslora``, ``alpha / sqrt(r)``, is read by rescaling alpha).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tencentpretrain.checkpoint import atomic_dir, load_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.keymap import fill, match
from tencentpretrain.convert.llama import HF_TO_OURS, KEY, QUERY, config_to_hf, permute_rotary
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.training.lora import LORA_SUFFIXES, LoraConfig, LoraError, read_adapter_config

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
WEIGHT = ".weight"
# Settings of PEFT's LoraConfig that change the arithmetic and that we do not implement: refused when set.
UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
               "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "trainable_token_indices": None,
               "target_parameters": None}

MODULES = {hf.removesuffix(WEIGHT): ours.removesuffix(WEIGHT) for hf, ours in HF_TO_OURS.items()
           if hf.endswith(WEIGHT)}  # module templates: "model.layers.{}.self_attn.q_proj" -> "...linear_layers.0"
OUR_MODULES = {ours: hf for hf, ours in MODULES.items()}
ROTARY = {QUERY.removesuffix(WEIGHT): "heads_num", KEY.removesuffix(WEIGHT): "kv_heads_num"}


def is_peft_dir(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory."""
    return (Path(path) / CONFIG_FILE).is_file()


OURS_TENSORS = {ours: hf for hf, ours in HF_TO_OURS.items()}


def _hf_name(name: str, mapping: dict[str, str]) -> str:
    """The Hugging Face name of our module or tensor ``name``."""
    found = match(name, mapping)
    if found is None:
        raise LoraError(f"the adapter's {name} has no Hugging Face counterpart in the LLaMA key map")
    return fill(mapping[found[0]], found[1])


def _rotary(hf_module_template: str, lora_b: torch.Tensor, config: ModelConfig, to_hf: bool) -> torch.Tensor:
    heads = ROTARY.get(hf_module_template)
    return permute_rotary(lora_b, getattr(config, heads), to_hf) if heads else lora_b


def check_peft_exportable(config: ModelConfig) -> None:
    """Raise ConversionError unless ``config`` is a LLaMA architecture, whose modules PEFT's names can name."""
    config_to_hf(config, config.vocab_size or 1, torch.float32)


def adapter_to_peft(adapter: dict[str, torch.Tensor], lora: LoraConfig,
                    config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """PEFT's tensors and ``adapter_config.json`` for our adapter state (``lora_state_dict``'s names)."""
    tensors, targets, saved = {}, set(), set()
    for name, tensor in adapter.items():
        if name.endswith(LORA_SUFFIXES):
            module, factor = name.rsplit(".", 1)
            hf_module = _hf_name(module, OUR_MODULES)
            hf_template = match(hf_module, MODULES)[0]
            if factor == "lora_B":
                tensor = _rotary(hf_template, tensor, config, to_hf=True)
            tensors[f"{PREFIX}{hf_module}.{factor}.weight"] = tensor.contiguous()
            targets.add(hf_module)
        else:
            hf_name = _hf_name(name, OURS_TENSORS)
            tensors[PREFIX + hf_name] = tensor.clone()  # a tied head shares the embedding's memory: own copies
            saved.add(hf_name.removesuffix(WEIGHT))
    if not targets:
        raise LoraError("the adapter has no LoRA factors")
    target_modules = set()
    for leaf in sorted({t.rsplit(".", 1)[-1] for t in targets}):
        # PEFT matches target names as suffixes: the leaf name where every layer's is adapted, else full names
        mine = {t for t in targets if t.rsplit(".", 1)[-1] == leaf}
        every = {fill(template, i) for template in MODULES if template.endswith(f".{leaf}")
                 for i in range(config.layers_num)}
        target_modules |= {leaf} if mine == every else mine
    target_modules = sorted(target_modules)
    settings = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
                "lora_dropout": lora.dropout, "target_modules": target_modules,
                "modules_to_save": sorted(saved) or None, "base_model_name_or_path": None, "inference_mode": True,
                "init_lora_weights": True, "use_rslora": False, **UNSUPPORTED,
                "ensure_weight_tying": config.tie_weights}  # tied: PEFT's head follows the trained embedding copy
    return tensors, settings


def adapter_from_peft(tensors: dict[str, torch.Tensor], settings: dict, config: ModelConfig,
                      source: str = "the PEFT adapter") -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """Our adapter state and settings from PEFT's tensors and ``adapter_config.json``."""
    if settings.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{source}: peft_type {settings.get('peft_type')!r} is not LoRA")
    for key, default in UNSUPPORTED.items():
        if settings.get(key) is not None and settings[key] != default:
            raise LoraError(f"{source}: {key} = {settings[key]!r} is not supported (only {default!r})")
    for key in ("r", "lora_alpha"):
        if not isinstance(settings.get(key), int | float) or isinstance(settings.get(key), bool):
            raise LoraError(f"{source}: {CONFIG_FILE} needs a number {key!r}, got {settings.get(key)!r}")
    rank, alpha = int(settings["r"]), float(settings["lora_alpha"])
    if settings.get("use_rslora"):
        alpha *= math.sqrt(rank)  # PEFT scales by alpha / sqrt(r); ours by alpha / r
    adapter, modules, trained = {}, [], []
    for name, tensor in tensors.items():
        if not name.startswith(PREFIX):
            raise LoraError(f"{source}: tensor {name} does not start with {PREFIX!r}")
        hf_name = name.removeprefix(PREFIX).replace(".default.", ".")  # adapters saved with the adapter's name
        for factor in ("lora_A", "lora_B"):
            if hf_name.endswith(f".{factor}.weight"):
                hf_module = hf_name.removesuffix(f".{factor}.weight")
                found = match(hf_module, MODULES)
                if found is None:
                    raise LoraError(f"{source}: tensor {name}: no TencentPretrain module for {hf_module}")
                module = fill(MODULES[found[0]], found[1])
                if factor == "lora_B":
                    tensor = _rotary(found[0], tensor, config, to_hf=False)
                adapter[f"{module}.{factor}"] = tensor
                if factor == "lora_A":
                    modules.append(module)
                break
        else:
            found = match(hf_name, HF_TO_OURS)
            if found is None:
                raise LoraError(f"{source}: tensor {name}: no TencentPretrain tensor for {hf_name}")
            ours = fill(HF_TO_OURS[found[0]], found[1])
            adapter[ours] = tensor
            trained.append(ours)
            if config.tie_weights and ours == "embedding.word.embedding.weight":
                adapter["target.lm.output_layer.weight"] = tensor
                trained.append("target.lm.output_layer.weight")
    if not modules:
        raise LoraError(f"{source}: no lora_A tensors")
    lora = LoraConfig(rank, alpha, float(settings.get("lora_dropout") or 0.0), tuple(sorted(modules)),
                      tuple(trained))
    return adapter, lora


def write_peft_adapter(adapter: dict[str, torch.Tensor], lora: LoraConfig, config: ModelConfig,
                       directory: str | Path) -> None:
    """Write a PEFT adapter directory (appearing only once complete)."""
    from safetensors.torch import save_file

    tensors, settings = adapter_to_peft(adapter, lora, config)
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def read_peft_adapter(directory: str | Path, config: ModelConfig) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """Our adapter state and settings from a PEFT adapter directory (safetensors, or PEFT's older ``.bin``)."""
    directory = Path(directory)
    settings = read_json_object(directory / CONFIG_FILE, LoraError, what="PEFT adapter config")
    for name in (WEIGHTS_FILE, "adapter_model.bin"):  # PEFT's older versions wrote the .bin
        if (directory / name).is_file():
            tensors = load_state_dict(directory / name)  # damaged files: a CheckpointError naming the file
            break
    else:
        raise LoraError(f"{directory}: neither {WEIGHTS_FILE} nor adapter_model.bin")
    return adapter_from_peft(tensors, settings, config, source=str(directory))


def read_adapter(path: str | Path, config: ModelConfig | None) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """An adapter in either format: a PEFT directory (needs the model ``config``) or our file with its settings."""
    if is_peft_dir(path):
        if config is None:
            raise LoraError(f"{path} is a PEFT adapter: the model's --config_path is needed to read it")
        return read_peft_adapter(path, config)
    if Path(path).is_dir():
        raise LoraError(f"{path} is a directory without {CONFIG_FILE}: not a PEFT adapter")
    return load_state_dict(path), read_adapter_config(path)
