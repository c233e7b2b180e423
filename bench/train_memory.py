"""Peak memory per rank while loading a pretrained checkpoint: torchrun (whole model on every rank) against
deepspeed ZeRO-3 (built partitioned under ``deepspeed.zero.Init``, filled one gathered parameter at a time from
rank 0's memory-mapped file), both on 2 CPU ranks, in one run.

    python bench/train_memory.py                       # ~170M-parameter LLaMA, vocab 32000
    python bench/train_memory.py --layers_num 4 --hidden_size 512

Each rank prints its peak RSS (``getrusage``) before building the model and after loading it; this script collects
those lines and prints the per-rank figures and the ratio. One training step follows (``--total_steps 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.checkpoint import save_state_dict

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"embedding": ["word"], "remove_transformer_bias": True, "remove_embedding_layernorm": True,
         "rotary_position_embedding": True, "encoder": "transformer", "feed_forward": "gated", "mask": "causal",
         "layernorm_positioning": "pre", "layernorm": "rms", "target": ["lm"], "hidden_act": "silu", "dropout": 0.0}
LINE = re.compile(r"rank (\d+): peak RSS (\d+) MiB before building the model, (\d+) MiB after loading it")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=1024)
    parser.add_argument("--layers_num", type=int, default=8)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--work_dir", default=None, help="Scratch directory (default: a temporary one).")
    return parser.parse_args(argv)


def prepare(folder: Path, args) -> tuple[Path, Path, Path]:
    """A config, a random checkpoint of it and a tiny dataset with the same vocabulary."""
    hidden = args.hidden_size
    config = {**LLAMA, "emb_size": hidden, "hidden_size": hidden, "feedforward_size": int(hidden * 8 / 3) // 64 * 64,
              "heads_num": hidden // 64, "layers_num": args.layers_num, "max_seq_length": 128,
              "vocab_size": args.vocab_size}
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config))
    model = build_model(ModelConfig.from_dict(config))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)
    save_state_dict(model.state_dict(), folder / "pretrained.bin")
    del model
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(f"document {i} " + " ".join(str(j) for j in range(200)) for i in range(20)))
    sys.path.insert(0, str(ROOT))
    import preprocess

    spm = ROOT.parent / "shared" / "data" / "tokenizers" / "llama_tokenizer.model"
    preprocess.main(["--corpus_path", str(corpus), "--spm_model_path", str(spm), "--dataset_path",
                     str(folder / "dataset"), "--seq_length", "64"])
    return config_path, folder / "pretrained.bin", folder / "dataset"


def launch(kind: str, folder: Path, config: Path, pretrained: Path, dataset: Path) -> list[tuple[int, int, int]]:
    port = _free_port()
    common = ["pretrain.py", "--config_path", str(config), "--pretrained_model_path", str(pretrained),
              "--dataset_path", str(dataset), "--output_model_path", str(folder / kind / "m"), "--total_steps", "1",
              "--batch_size", "1", "--peak_flops", "1e12"]
    if kind == "zero3":
        command = ["deepspeed", "--master_port", str(port), "--num_gpus", "2", *common, "--deepspeed",
                   "--enable_zero3", "--deepspeed_config", str(ROOT / "models" / "deepspeed_zero3_config.json")]
    else:
        command = ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return sorted((int(r), int(b), int(a)) for r, b, a in LINE.findall(proc.stdout + proc.stderr))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = Path(args.work_dir or tempfile.mkdtemp(prefix="train_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        config, pretrained, dataset = prepare(folder, args)
        print(f"checkpoint: {pretrained.stat().st_size / 2**20:.0f} MiB", flush=True)
        results = {kind: launch(kind, folder, config, pretrained, dataset) for kind in ("ddp", "zero3")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("| engine | rank | peak RSS before build (MiB) | peak RSS after loading (MiB) | growth (MiB) |")
    print("|---|---|---|---|---|")
    for kind, rows in results.items():
        for rank, before, after in rows:
            print(f"| {kind} | {rank} | {before} | {after} | {after - before} |")
    growth = {kind: max(a - b for _, b, a in rows) for kind, rows in results.items()}
    print(f"max growth per rank: ddp {growth['ddp']} MiB, zero3 {growth['zero3']} MiB, "
          f"ratio ddp/zero3 {growth['ddp'] / max(growth['zero3'], 1):.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
