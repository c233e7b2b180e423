"""Shared by the evaluation tests: a tiny random LLaMA checkpoint, its Hugging Face export, the scripts' mains."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.model import build_model
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TINY = {"emb_size": 32, "hidden_size": 32, "feedforward_size": 64, "heads_num": 4, "local_kv_heads_num": 2,
        "layers_num": 2, "dropout": 0.0, "max_seq_length": 1024, "embedding": ["word"],
        "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
        "encoder": "transformer", "feed_forward": "gated", "mask": "causal", "layernorm_positioning": "pre",
        "layernorm": "rms", "target": ["lm"], "hidden_act": "silu"}


def script_main(name: str):
    """The ``main`` of ``scripts/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@dataclass(frozen=True)
class TinyModel:
    """A random tiny LLaMA (grouped-query attention) saved both ways.

    Attributes:
        config: our JSON config.
        checkpoint: our ``.bin``.
        spm: the SentencePiece model.
        hf_dir: the Hugging Face export written by our converter (tokenizer included).
    """

    config: Path
    checkpoint: Path
    spm: Path
    hf_dir: Path

    def model_flags(self) -> list[str]:
        return ["--load_model_path", str(self.checkpoint), "--config_path", str(self.config),
                "--spm_model_path", str(self.spm), "--device", "cpu"]


def tiny_model(folder: Path, spm: Path, seed: int = 0) -> TinyModel:
    """Build, save and export a random model; weights drawn wide (std 0.3) so its choices are not near-ties."""
    torch.manual_seed(seed)
    config = ModelConfig.from_dict(TINY)
    model = build_model(config, SentencePieceTokenizer(spm).vocab_size)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    config.save(folder / "config.json")
    save_state_dict(model.state_dict(), folder / "model.bin")
    export = script_main("convert_llama_from_tencentpretrain_to_huggingface")
    status = export(["--input_model_path", str(folder / "model.bin"), "--config_path", str(folder / "config.json"),
                     "--output_model_path", str(folder / "hf"), "--spm_model_path", str(spm)])
    assert status == 0
    return TinyModel(folder / "config.json", folder / "model.bin", spm, folder / "hf")
