"""Memory per rank while loading a pretrained checkpoint: torchrun (whole model on every rank) against deepspeed
ZeRO-3 (built partitioned under ``deepspeed.zero.Init``, each parameter scattered from rank 0's memory-mapped file
straight into the ranks' partitions), both on 2 CPU ranks, in one run.

    python -m bench.train_memory                       # 165M-parameter LLaMA, vocab 32000
    python -m bench.train_memory --layers_num 4 --hidden_size 512

Each rank runs ``pretrain.py``'s setup and build, then one training step, with ``TP_MEMORY_TRACE=1``: after each
stage (imports, process group, data, model built, weights loaded, engine with optimizer, first step) it prints the
peak RSS during the stage (``VmHWM``, reset between stages) and the resident set after it (anonymous / file pages).
This script launches the workers (``--worker``), collects those lines and prints the table and the ratios.
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
from tencentpretrain.training.memory import MemoryTrace

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"embedding": ["word"], "remove_transformer_bias": True, "remove_embedding_layernorm": True,
         "rotary_position_embedding": True, "encoder": "transformer", "feed_forward": "gated", "mask": "causal",
         "layernorm_positioning": "pre", "layernorm": "rms", "target": ["lm"], "hidden_act": "silu", "dropout": 0.0}
LINE = re.compile(r"rank (\d+) memory after (.+?): peak (\d+) MiB, resident (\d+) MiB \(anon (\d+), file (\d+)\)")


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
    import preprocess

    spm = ROOT.parent / "shared" / "data" / "tokenizers" / "llama_tokenizer.model"
    preprocess.main(["--corpus_path", str(corpus), "--spm_model_path", str(spm), "--dataset_path",
                     str(folder / "dataset"), "--seq_length", "64"])
    return config_path, folder / "pretrained.bin", folder / "dataset"


def launch(kind: str, folder: Path, config: Path, pretrained: Path, dataset: Path) -> dict:
    """Run the workers; {rank: [(stage, peak, resident, anon, file), ...]} in stage order."""
    port = _free_port()
    common = [str(Path(__file__).resolve()), "--worker", "--config_path", str(config), "--pretrained_model_path",
              str(pretrained), "--dataset_path", str(dataset), "--output_model_path", str(folder / kind / "m"),
              "--total_steps", "1", "--batch_size", "1", "--peak_flops", "1e12"]
    if kind == "zero3":
        command = ["deepspeed", "--master_port", str(port), "--num_gpus", "2", *common, "--deepspeed",
                   "--enable_zero3", "--deepspeed_config", str(ROOT / "models" / "deepspeed_zero3_config.json")]
    else:
        command = ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TP_MEMORY_TRACE": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rows: dict[int, list] = {}
    for rank, stage, *figures in LINE.findall(proc.stdout + proc.stderr):
        rows.setdefault(int(rank), []).append((stage, *map(int, figures)))
    return dict(sorted(rows.items()))


def worker(argv: list[str]) -> None:
    """One rank: pretrain.py's setup and build, then one optimizer step, marking the memory after each stage."""
    trace = MemoryTrace(int(os.environ.get("RANK", "0")))
    trace.mark("imports")
    from tencentpretrain.training.build import build, setup

    opts, info = setup(argv)
    trace.mark("joining the process group")
    run = build(opts, info, trace)
    batch = next(iter(run.loader))
    run.engine.train()
    loss, _ = run.engine.forward(batch.inputs(), boundary=True)
    run.engine.backward(loss)
    run.engine.step()
    trace.mark("the first training step")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(results: dict) -> None:
    print("| engine | rank | stage | peak during (MiB) | resident after (MiB) | anon | file |")
    print("|---|---|---|---|---|---|---|")
    for kind, ranks in results.items():
        for rank, stages in ranks.items():
            for stage, peak, resident, anon, file in stages:
                print(f"| {kind} | {rank} | {stage} | {peak} | {resident} | {anon} | {file} |")
    print()
    print("| engine | rank | resident before building (MiB) | peak building + loading | growth | "
          "anon growth after loading | engine (optimizer) peak | first step peak |")
    print("|---|---|---|---|---|---|---|---|")
    growth = {}
    for kind, ranks in results.items():
        for rank, stages in ranks.items():
            by = {stage: figures for stage, *figures in stages}
            base = by["reading the data and config"]
            loaded = by.get("loading the weights")
            peak = max(by["building the model"][0], loaded[0])
            growth[kind] = max(growth.get(kind, 0), peak - base[1])
            print(f"| {kind} | {rank} | {base[1]} | {peak} | {peak - base[1]} | {loaded[2] - base[2]} | "
                  f"{by['building the engine (optimizer)'][0]} | {by['the first training step'][0]} |")
    print(f"max growth per rank while building + loading: ddp {growth['ddp']} MiB, zero3 {growth['zero3']} MiB, "
          f"ratio ddp/zero3 {growth['ddp'] / max(growth['zero3'], 1):.2f}x")


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
    report(results)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--worker" in sys.argv:
        worker([a for a in sys.argv[1:] if a != "--worker"])
    else:
        main()
