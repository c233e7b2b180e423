"""TencentPretrain-compatible pretraining framework for LLaMA-family models.

Importing the package registers every named part (embeddings, encoders, targets, layers, data processors,
tokenizers, templates). The main entry points:

- ``ModelConfig.from_json(path)``: a TencentPretrain JSON config, loaded strictly.
- ``build_model(config, vocab_size)``: the model that config describes.
- ``load_model(config_path, model_path, device="cpu")``: a model filled from a ``.bin`` or ``.safetensors``.

Bad input (a missing, truncated or corrupt file, a wrong key or flag) raises an ``InputError`` (a ``ValueError``;
``CheckpointError``, ``ConfigError`` and the other documented errors derive from it) whose message names the file.
"""

from tencentpretrain import (  # noqa: F401  (registration)
    data,
    decoders,
    embeddings,
    encoders,
    layers,
    targets,
    tokenizers,
)
from tencentpretrain.checkpoint import CheckpointError, load_model, load_state_dict
from tencentpretrain.config import ConfigError, ModelConfig
from tencentpretrain.errors import InputError
from tencentpretrain.model import Model, build_model

__all__ = ["CheckpointError", "ConfigError", "InputError", "Model", "ModelConfig", "build_model", "load_model",
           "load_state_dict"]
__version__ = "0.1.0"
