"""Loading a model for generation: a TencentPretrain checkpoint or a Hugging Face directory, a LoRA adapter merged."""

from __future__ import annotations

from pathlib import Path

import torch

from tencentpretrain.checkpoint import load_state_dict, model_from_state
from tencentpretrain.config import ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.model import Model


def load_generation_model(model_path: str | Path, config_path: str | Path | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                          lora_path: str | Path | None = None) -> Model:
    """Load a model for generation from a TencentPretrain checkpoint or a Hugging Face directory.

    Args:
        model_path: a ``.bin``/``.safetensors`` file (needs ``config_path``) or a Hugging Face LLaMA directory
            (``config.json`` plus weights), converted on the fly.
        config_path: the TencentPretrain JSON config of a checkpoint file; optional for a directory (whose own
            config.json is used), where it must describe the same sizes.
        device: where to put the model.
        dtype: cast floating-point weights (default: keep the checkpoint's).
        lora_path: a LoRA adapter merged into the weights first: our ``lora.bin`` (with its ``.lora.json``) or a
            PEFT adapter directory (``convert/peft.py``).
    """
    model_path = Path(model_path)
    if not model_path.exists():
        raise InputError(f"{model_path}: no such checkpoint file or Hugging Face directory")
    if not model_path.is_dir():
        if config_path is None:
            raise InputError(f"{model_path}: a checkpoint file needs --config_path")
        config = ModelConfig.from_json(config_path)
        config.require_causal("generation")  # before reading the weights
        state = load_state_dict(model_path)
    else:
        from tencentpretrain.convert import load_hf_llama

        config, state = load_hf_llama(model_path)
        if config_path is not None:
            _check_same_architecture(ModelConfig.from_json(config_path), config)
    if lora_path is not None:
        state = with_adapter(state, lora_path, config)
    return model_from_state(config, state, str(model_path), device, dtype)


def with_adapter(state: dict[str, torch.Tensor], lora_path: str | Path, config: ModelConfig) -> dict:
    """``state`` with the adapter at ``lora_path`` (either format) merged in; errors name ``--lora_path``."""
    from tencentpretrain.cli import naming
    from tencentpretrain.convert.peft import read_adapter
    from tencentpretrain.training.lora import merge_lora_state

    with naming("--lora_path", lora_path):
        if not Path(lora_path).exists():
            raise InputError(f"{lora_path}: no such adapter file or PEFT directory")
        adapter, lora = read_adapter(lora_path, config)
        return merge_lora_state(state, adapter, lora.rank, lora.alpha)


def _check_same_architecture(given: ModelConfig, found: ModelConfig) -> None:
    """Raise InputError when a --config_path disagrees with a Hugging Face directory's config.json."""
    keys = ("hidden_size", "feedforward_size", "heads_num", "kv_heads_num", "layers_num")
    diff = [f"{k}: {getattr(given, k)} vs {getattr(found, k)}" for k in keys if getattr(given, k) != getattr(found, k)]
    if diff:
        raise InputError(f"{given.source} disagrees with {found.source} ({'; '.join(diff)}); leave --config_path out")
