"""Helpers of the training tests: a micro LLaMA config, a tiny preprocessed corpus, pretrain.py's command line."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from conftest import generated_lines

ROOT = Path(__file__).resolve().parents[1]

MICRO_LLAMA = {
    "emb_size": 64, "hidden_size": 64, "feedforward_size": 176, "heads_num": 4, "layers_num": 2,
    "max_seq_length": 64, "embedding": ["word"], "remove_transformer_bias": True,
    "remove_embedding_layernorm": True, "rotary_position_embedding": True, "encoder": "transformer",
    "feed_forward": "gated", "mask": "causal", "layernorm_positioning": "pre", "layernorm": "rms",
    "target": ["lm"], "hidden_act": "silu", "dropout": 0.0,
}


def load_script(name: str, folder: str = ""):
    """Import a script (``pretrain.py``, ``preprocess.py``; ``folder="inference"``: ``inference/run_llama.py``...)
    as a module, registered in ``sys.modules`` (the folders are not packages)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}" if folder else name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_config(folder: Path, **overrides) -> Path:
    """The micro LLaMA config (2 layers, hidden 64), with ``overrides``, as a JSON file."""
    path = folder / "micro_config.json"
    path.write_text(json.dumps({**MICRO_LLAMA, **overrides}), encoding="utf-8")
    return path


def make_dataset(folder: Path, spm: Path, name: str = "dataset", lines: int = 600, seq_length: int = 32,
                 seed: int = 1) -> Path:
    """Preprocess ``lines`` generated sentences with ``spm`` (lm processor) into ``folder/name``."""
    corpus = folder / f"{name}.txt"
    corpus.write_text("\n".join(generated_lines(lines, seed=seed)) + "\n", encoding="utf-8")
    load_script("preprocess").main(["--corpus_path", str(corpus), "--spm_model_path", str(spm), "--dataset_path",
                                    str(folder / name), "--seq_length", str(seq_length), "--data_processor", "lm"])
    return folder / name


def train_argv(dataset: Path, spm: Path, config: Path, output: Path, *extra: str, steps: int = 6,
               save: int = 3, batch: int = 8, lr: float = 3e-3) -> list[str]:
    """A pretrain.py command line for the micro model (report every step, so every loss is logged)."""
    return ["--dataset_path", str(dataset), "--spm_model_path", str(spm), "--config_path", str(config),
            "--output_model_path", str(output), "--total_steps", str(steps), "--save_checkpoint_steps", str(save),
            "--report_steps", "1", "--batch_size", str(batch), "--learning_rate", str(lr), "--warmup", "0.05",
            "--peak_flops", "1e12", *extra]


def subprocess_env() -> dict[str, str]:
    """Environment for launcher subprocesses: the repo importable, one thread per rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def losses(log: Path) -> dict[int, float]:
    """Step -> training loss, from a JSONL training log."""
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}
