"""Which ``--init`` of extend_vocab.py starts stage 1 best: held-out bits per character on Chinese, side by side.

A small LLaMA is pretrained on English (wiki_demo_en) with LLaMA's tokenizer; it is extended to LLaMA + the Chinese
pieces (scripts/merge_tokenizers.py, scripts/extend_vocab.py) once per init, and each extended model is trained in
stage 1 (transformer frozen: ``--freeze_patterns encoder``) for the same steps on clue_small_zh. Held-out: the last
``--held_out`` documents of clue_small_zh (never trained on), each scored whole in bits per character by the
evaluation module (tencentpretrain/evaluation/perplexity.py: bos-conditioned rolling windows, no eos). A reference
row trains the unextended model the same way with LLaMA's tokenizer. Everything runs through the project's
commands (preprocess.py, pretrain.py, the scripts), on the CPU, in a few minutes.

    python -m bench.vocab_init --steps_en 200 --steps 60 --with_reference
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tencentpretrain.checkpoint import load_model
from tencentpretrain.evaluation import evaluate_perplexity
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]

SHARED = (ROOT.parent / "shared" if (ROOT.parent / "shared").exists()
          else Path(os.environ.get("TP_SHARED_DIR", ROOT.parent / "shared"))) / "data"
INITS = ("subword_mean", "mean", "normal")


def script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(args: argparse.Namespace) -> dict:
    return {"mask": "causal", "layernorm_positioning": "pre", "target": ["lm"],
            "emb_size": args.hidden, "hidden_size": args.hidden, "feedforward_size": args.hidden * 11 // 4,
            "heads_num": args.hidden // 32, "layers_num": args.layers, "max_seq_length": args.seq_length,
            "embedding": ["word"], "remove_transformer_bias": True, "remove_embedding_layernorm": True,
            "rotary_position_embedding": True, "feed_forward": "gated", "layernorm": "rms", "hidden_act": "silu",
            "dropout": 0.0}


def preprocess(corpus: Path, spm: Path, dataset: Path, seq_length: int) -> Path:
    script(ROOT / "preprocess.py").main(["--corpus_path", str(corpus), "--spm_model_path", str(spm), "--dataset_path",
                                         str(dataset), "--seq_length", str(seq_length), "--processes_num", "2",
                                         "--overwrite"])
    return dataset


def pretrain(dataset: Path, spm: Path, config: Path, output: Path, steps: int, lr: float, batch: int,
             *extra: str) -> Path:
    argv = ["--dataset_path", str(dataset), "--spm_model_path", str(spm), "--config_path", str(config),
            "--output_model_path", str(output), "--total_steps", str(steps), "--save_checkpoint_steps", str(steps),
            "--report_steps", str(max(steps // 4, 1)), "--batch_size", str(batch), "--learning_rate", str(lr),
            "--warmup", "0.05", "--scheduler", "cosine", "--peak_flops", "1e12", "--weight_decay", "0", *extra]
    if script(ROOT / "pretrain.py").main(argv) != 0:
        raise SystemExit(f"pretrain.py failed: {argv}")
    return output.with_name(output.name + ".bin")


def score(config: Path, model_path: Path, spm: Path, documents: list[str], window: int) -> float:
    """Held-out bits per character, the figure of ``scripts/evaluate.py --task perplexity --seq_length window``."""
    model = load_model(config, model_path).eval()
    return evaluate_perplexity(model, SentencePieceTokenizer(spm), documents, window, batch_size=8).bits_per_character


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    tokenizers = SHARED / "tokenizers"
    base_spm = tokenizers / "llama_tokenizer.model"
    script(ROOT / "scripts" / "merge_tokenizers.py").main(["--base_spm_model_path", str(base_spm),
                                                            "--extra_spm_model_path",
                                                            str(tokenizers / "chinese_sp.model"), "--output_dir",
                                                            str(work / "tok")])
    spm = work / "tok" / "tokenizer.model"
    config = work / "config.json"
    config.write_text(json.dumps(model_config(args)))
    lines = [x for x in (SHARED / "corpora" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines() if x]
    held_out, train_zh = lines[-args.held_out:], work / "zh_train.txt"
    train_zh.write_text("\n".join(lines[:-args.held_out]) + "\n", encoding="utf-8")

    started = time.perf_counter()
    en = preprocess(SHARED / "corpora" / "wiki_demo_en.txt", base_spm, work / "data_en", args.seq_length)
    english = pretrain(en, base_spm, config, work / "english", args.steps_en, args.lr_en, args.batch_size)
    zh_merged = preprocess(train_zh, spm, work / "data_zh", args.seq_length)
    rows = []
    for init in args.inits:
        extended = work / f"ext_{init}.bin"
        script(ROOT / "scripts" / "extend_vocab.py").main(
            ["--input_model_path", str(english), "--config_path", str(config), "--base_spm_model_path",
             str(base_spm), "--spm_model_path", str(spm), "--output_model_path", str(extended), "--init", init])
        before = score(config, extended, spm, held_out, args.seq_length)
        trained = pretrain(zh_merged, spm, config, work / f"stage1_{init}", args.steps, args.lr, args.batch_size,
                           "--pretrained_model_path", str(extended), "--freeze_patterns", "encoder")
        rows.append({"model": f"extended, --init {init}", "bpc_0": before,
                     "bpc_n": score(config, trained, spm, held_out, args.seq_length)})
    if args.with_reference:
        zh_base = preprocess(train_zh, base_spm, work / "data_zh_base", args.seq_length)
        before = score(config, english, base_spm, held_out, args.seq_length)
        trained = pretrain(zh_base, base_spm, config, work / "stage1_base", args.steps, args.lr, args.batch_size,
                           "--pretrained_model_path", str(english), "--freeze_patterns", "encoder")
        rows.append({"model": "not extended (LLaMA tokenizer)", "bpc_0": before,
                     "bpc_n": score(config, trained, base_spm, held_out, args.seq_length)})
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps_en", type=int, default=200, help="English pretraining steps")
    parser.add_argument("--steps", type=int, default=60, help="stage-1 steps on Chinese, the same for every init")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr_en", type=float, default=3e-3)
    parser.add_argument("--lr", type=float, default=3e-3, help="stage-1 learning rate")
    parser.add_argument("--held_out", type=int, default=100, help="last documents of clue_small_zh held out")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS))
    parser.add_argument("--with_reference", action="store_true", help="also train the unextended model the same "
                        "way (LLaMA's tokenizer on the Chinese text)")
    parser.add_argument("--work_dir", help="keep the files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: this benchmark needs the real tokenizers and corpora")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, Path(args.work_dir or tmp))
    reference = rows[0]["bpc_n"]
    print(f"\nheld-out bits per character, {args.held_out} clue_small_zh documents; stage 1 = {args.steps} steps "
          f"(batch {args.batch_size} x {args.seq_length} tokens), English pretraining {args.steps_en} steps")
    print(f"| model | bpc after extension (0 steps) | bpc after {args.steps} steps | vs subword_mean |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['model']} | {row['bpc_0']:.3f} | {row['bpc_n']:.3f} | {row['bpc_n'] / reference:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
