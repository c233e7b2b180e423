"""Helpers of the GGUF tests: tiny random LLaMAs in our format, a tiny trained one, a merged tokenizer, the CLIs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.convert.llama import LLAMA_ARCHITECTURE

ROOT = Path(__file__).resolve().parents[1]

# (hidden, heads, kv heads, layers, ffn, tied): rows are multiples of 32 so that q8_0/q4_0 quantise every matrix.
SHAPES = {
    "mha": (64, 4, 4, 2, 96, False),
    "gqa": (64, 8, 2, 2, 128, False),
    "mha-tied": (64, 4, 4, 2, 96, True),
    "gqa-tied": (96, 6, 3, 2, 160, True),
}


# Tiny members of the byte-level BPE families, as our config keys (their llama.cpp architectures: llama, qwen2, qwen3).
FAMILIES = {
    "llama3": {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 16}},
    "llama3-linear": {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "qwen2": {"rope_theta": 1000000.0, "qkv_bias": True, "tie_weights": True},
    "qwen3": {"rope_theta": 1000000.0, "qk_norm": True, "attention_head_size": 24, "tie_weights": True},
    "qwen3-yarn": {"rope_theta": 1000000.0, "qk_norm": True, "attention_head_size": 24, "tie_weights": True,
                   "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
}


def family_config(family: str) -> ModelConfig:
    """A tiny model of one of FAMILIES (hidden 64, GQA 4/2, 2 layers, context 512)."""
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE, "emb_size": 64, "hidden_size": 64, "feedforward_size": 96, "heads_num": 4,
        "local_kv_heads_num": 2, "layers_num": 2, "max_seq_length": 512, "layernorm_eps": 1e-6,
        "allow_padded_vocab": True, **FAMILIES[family],
    })


def shared_data() -> Path | None:
    """``../shared/data`` beside the repository, or ``$TP_SHARED_DIR/data``; None when neither exists."""
    for base in (ROOT.parent / "shared", Path(os.environ.get("TP_SHARED_DIR", "/nonexistent"))):
        if (base / "data").is_dir():
            return base / "data"
    return None


def script(name: str):
    """The ``main`` of ``scripts/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def tiny_config(shape: str, vocab: int, max_seq_length: int = 256) -> ModelConfig:
    hidden, heads, kv, layers, ffn, tied = SHAPES[shape]
    return ModelConfig.from_dict({
        **LLAMA_ARCHITECTURE, "emb_size": hidden, "hidden_size": hidden, "feedforward_size": ffn, "heads_num": heads,
        "local_kv_heads_num": kv if kv != heads else None, "layers_num": layers, "max_seq_length": max_seq_length,
        "layernorm_eps": 1e-5, "rope_theta": 5000.0, "tie_weights": tied,
    })


def random_state(config: ModelConfig, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a LLaMA, large enough (std 0.1, norms around 1) that the logits are not flat."""
    from tencentpretrain.model import build_model

    torch.manual_seed(seed)
    model = build_model(config, vocab)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.dim() == 1:
            state[name] = 1 + 0.1 * torch.randn(tensor.shape)
        else:
            state[name] = 0.1 * torch.randn(tensor.shape)
    if config.tie_weights:
        state.pop("target.lm.output_layer.weight", None)
    return state


def write_checkpoint(folder: Path, config: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    """``folder/model.bin`` and ``folder/config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, folder / "model.bin")
    config.save(folder / "config.json")
    return folder / "model.bin", folder / "config.json"


def to_gguf(model: Path, config: Path | None, spm: Path, out: Path, outtype: str = "f32", *extra: str) -> Path:
    """Run the export script; return the written file."""
    argv = ["--input_model_path", str(model), "--spm_model_path", str(spm), "--output_model_path", str(out),
            "--outtype", outtype, *extra]
    if config is not None:
        argv += ["--config_path", str(config)]
    assert script("convert_llama_from_tencentpretrain_to_gguf")(argv) == 0
    return out


def merge_tokenizers(base: Path, extra: Path, out: Path) -> Path:
    """The Chinese-LLaMA merge: ``base`` with the pieces of ``extra`` it lacks appended, score 0, as NORMAL pieces."""
    from sentencepiece import sentencepiece_model_pb2

    merged = sentencepiece_model_pb2.ModelProto()
    merged.ParseFromString(base.read_bytes())
    other = sentencepiece_model_pb2.ModelProto()
    other.ParseFromString(extra.read_bytes())
    known = {p.piece for p in merged.pieces}
    for piece in other.pieces:
        if piece.piece not in known and piece.type == 1:
            new = merged.pieces.add()
            new.piece, new.score = piece.piece, 0.0
    out.write_bytes(merged.SerializeToString())
    return out


def train_tiny(config: ModelConfig, ids: list[list[int]], vocab: int, steps: int = 300, seed: int = 0):
    """A model of ``config`` trained for ``steps`` Adam steps on the token rows ``ids`` (next-token loss), on one
    thread (a tiny model on a shared machine trains many times faster so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, ids, vocab, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(config: ModelConfig, ids: list[list[int]], vocab: int, steps: int, seed: int):
    from tencentpretrain.model import build_model

    torch.manual_seed(seed)
    model = build_model(config, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor(ids)
    for step in range(steps):
        batch = data[torch.randint(0, len(data), (16,))]
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
