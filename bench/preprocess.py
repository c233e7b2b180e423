"""Preprocessing speed and memory, side by side in one run on the same corpus and tokenizer.

1. ours: ``build_dataset`` (what ``preprocess.py --data_processor lm`` runs), in this process: the best of
   ``--trials`` runs, alternating with 2.;
2. raw: ``SentencePieceProcessor.encode`` of the same lines in chunks over the same number of processes, nothing
   written (the practical limit);
3. wall clock of whole commands, interpreter and torch import included: our ``preprocess.py`` and
   TencentPretrain's ``preprocess.py --data_processor lm --full_sentences`` run from a copy of the mirror
   (``--tencentpretrain_dir``; skipped if absent), which pickles one list per sample;
then loading: opening our dataset and reading every sample vs unpickling TencentPretrain's dataset.pt;
and peak RSS (process tree) of our preprocess on the corpus and on 10x the corpus.

    python -m bench.preprocess --repeat 4 --processes_num 2 --tencentpretrain_dir /tmp/tp_copy --trials 3

With ``--tokenizer_path`` (a byte-level BPE tokenizer.json, e.g. ../shared/data/tokenizers/qwen3) the tokenizer is
that one: raw is the ``tokenizers`` library's ``encode_batch_fast`` of the same chunks in this process on its own
thread pool (all cores), ours ``build_dataset`` as ``preprocess.py --tokenizer_path`` runs it at 1 and at
``--processes_num`` processes (the scaling); TencentPretrain,
which has no byte-level BPE tokenizer, is skipped.

    python -m bench.preprocess --repeat 4 --processes_num 2 --tokenizer_path ../shared/data/tokenizers/qwen3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def replicate(source: Path, times: int, target: Path) -> Path:
    data = source.read_bytes()
    with open(target, "wb") as f:
        for _ in range(times):
            f.write(data if data.endswith(b"\n") else data + b"\n")
    return target


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak RSS in MiB summed over the process tree, sampled every 10 ms)."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, peak / 2**20


def tokenizer_flag(args) -> str:
    return "--tokenizer_path" if args.tokenizer_path else "--spm_model_path"


def ours(corpus: Path, spm: Path, out: Path, args) -> tuple[float, float, dict]:
    cmd = [sys.executable, str(ROOT / "preprocess.py"), "--corpus_path", str(corpus), tokenizer_flag(args), str(spm),
           "--dataset_path", str(out), "--seq_length", str(args.seq_length), "--processes_num",
           str(args.processes_num), "--overwrite"]
    wall, rss = run_measured(cmd)
    return wall, rss, json.loads((out / "meta.json").read_text())


def ours_in_process(corpus: Path, spm: Path, out: Path, args, processes: int | None = None) -> tuple[float, dict]:
    from tencentpretrain.data import ProcessorSpec, build_dataset

    kind = "huggingface" if args.tokenizer_path else "sentencepiece"
    spec = ProcessorSpec(processor="lm", tokenizer=kind, tokenizer_path=str(spm), special_tokens=(),
                         seq_length=args.seq_length, corpus_format="text")
    start = time.perf_counter()
    meta = build_dataset(spec, corpus, out, processes_num=processes or args.processes_num, overwrite=True,
                         progress=False)
    return time.perf_counter() - start, meta


def _encode(job: tuple[str, list[str]]) -> int:
    import sentencepiece

    model, lines = job
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    return sum(map(len, sp.encode(lines))) + 2 * len(lines)


def raw_encode(corpus: Path, spm: Path, processes: int, chunk: int = 1024) -> tuple[float, int]:
    lines = corpus.read_text(encoding="utf-8").splitlines()
    jobs = [(str(spm), lines[i:i + chunk]) for i in range(0, len(lines), chunk)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        tokens = sum(pool.imap(_encode, jobs))
    return time.perf_counter() - start, tokens


def tencentpretrain(tp_dir: Path, corpus: Path, spm: Path, out: Path, args) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tp_dir), args.extra_pythonpath]))}
    cmd = [sys.executable, str(tp_dir / "preprocess.py"), "--corpus_path", str(corpus), "--spm_model_path",
           str(spm), "--dataset_path", str(out), "--data_processor", "lm", "--full_sentences", "--seq_length",
           str(args.seq_length), "--processes_num", str(args.processes_num)]
    cwd = os.getcwd()
    os.chdir(tp_dir)  # it writes dataset-tmp-*.pt into the working directory and reads models/ from there
    try:
        return run_measured(cmd, env)
    finally:
        os.chdir(cwd)


def load_times(ours_path: Path, tp_path: Path | None) -> dict[str, float]:
    from tencentpretrain.data import BinaryDataset

    start = time.perf_counter()
    ds = BinaryDataset(ours_path)
    opened = time.perf_counter() - start
    for i in range(len(ds)):
        ds[i]
    result = {"ours_open_s": opened, "ours_read_all_s": time.perf_counter() - start}
    if tp_path is not None:
        start, count = time.perf_counter(), 0
        with open(tp_path, "rb") as f:
            while True:
                try:
                    pickle.load(f)
                except EOFError:
                    break
                count += 1
        result["tencentpretrain_unpickle_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpora" / "clue_small_zh.txt")
    parser.add_argument("--spm", type=Path, default=SHARED / "tokenizers" / "llama_tokenizer.model")
    parser.add_argument("--tokenizer_path", type=Path, help="a byte-level BPE tokenizer.json or directory instead of "
                        "--spm (module docstring)")
    parser.add_argument("--repeat", type=int, default=4, help="Replicate the corpus this many times.")
    parser.add_argument("--processes_num", type=int, default=2)
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--tencentpretrain_dir", type=Path, default=Path("/tmp/tp_copy"))
    parser.add_argument("--extra_pythonpath", default="/tmp/tp_extra", help="Where `six` is, for TencentPretrain.")
    parser.add_argument("--rss_factor", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tokenizer_path:
        bpe(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = replicate(args.corpus, args.repeat, tmp / "corpus.txt")
        print(f"corpus: {args.corpus.name} x{args.repeat} = {corpus.stat().st_size / 2**20:.1f} MiB, "
              f"processes {args.processes_num}, seq_length {args.seq_length}")
        raw_s = ours_s = float("inf")
        for _ in range(args.trials):
            seconds, raw_tokens = raw_encode(corpus, args.spm, args.processes_num)
            raw_s = min(raw_s, seconds)
            seconds, meta = ours_in_process(corpus, args.spm, tmp / "ours", args)
            ours_s = min(ours_s, seconds)
        tokens = meta["counts"]["tokens"] + meta["counts"]["dropped_tokens"]
        assert tokens == raw_tokens, (tokens, raw_tokens)
        print(f"raw encode          : {raw_s:6.2f} s  {raw_tokens / raw_s:12,.0f} tokens/s")
        print(f"ours (in process)   : {ours_s:6.2f} s  {tokens / ours_s:12,.0f} tokens/s   "
              f"ours/raw = {raw_s / ours_s:.2f}")
        wall, rss, _ = ours(corpus, args.spm, tmp / "ours", args)
        print(f"ours (command)      : {wall:6.2f} s  {tokens / wall:12,.0f} tokens/s   peak RSS {rss:4.0f} MiB")
        tp_path = None
        if (args.tencentpretrain_dir / "preprocess.py").exists():
            tp_path = tmp / "tp_dataset.pt"
            tp_wall, tp_rss = tencentpretrain(args.tencentpretrain_dir, corpus, args.spm, tp_path, args)
            print(f"TencentPretrain cmd : {tp_wall:6.2f} s  {tokens / tp_wall:12,.0f} tokens/s   peak RSS "
                  f"{tp_rss:4.0f} MiB   ours/TencentPretrain = {tp_wall / wall:.2f}x (commands)")
            startup, _ = run_measured([sys.executable, "-c", "import torch"])
            print(f"start-up (python -c 'import torch', in both commands) {startup:.2f} s; without it "
                  f"ours/TencentPretrain = {(tp_wall - startup) / max(wall - startup, 1e-9):.1f}x")
        else:
            print("TencentPretrain copy not found: skipped")
        loads = load_times(tmp / "ours", tp_path)
        print("load: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in loads.items()))

        big = replicate(args.corpus, args.repeat * args.rss_factor, tmp / "big.txt")
        big_wall, big_rss, _ = ours(big, args.spm, tmp / "ours_big", args)
        print(f"peak RSS: x{args.repeat} corpus {rss:.0f} MiB, x{args.repeat * args.rss_factor} corpus "
              f"{big_rss:.0f} MiB (ratio {big_rss / rss:.2f}; {big_wall:.1f} s)")


def raw_bpe(corpus: Path, path: Path, trials: int, chunk: int = 1024) -> tuple[float, int]:
    """The library alone: the lines (stripped, blank ones left out, as ``lm`` reads them) in chunks through
    ``encode_batch_fast`` in this process; the best of ``trials``, and the tokens with each document's bos/eos
    counted. Each trial loads the tokenizer afresh (not timed), so its word cache starts cold as in our workers."""
    from tencentpretrain.tokenizers import HuggingFaceTokenizer

    lines = [line.strip() for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    best = float("inf")
    for _ in range(trials):
        tokenizer = HuggingFaceTokenizer(path)
        wrap = 1 + (tokenizer.bos_id is not None)
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(lines), chunk):
            tokens += sum(len(e.ids) for e in tokenizer.tk.encode_batch_fast(lines[i:i + chunk],
                                                                             add_special_tokens=False))
        best = min(best, time.perf_counter() - start)
    return best, tokens + wrap * len(lines)


def bpe(args) -> None:
    """The byte-level BPE comparison: raw ``tokenizers`` and ours at 1 and ``--processes_num`` processes."""
    from tencentpretrain.data.processors import build_processor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = replicate(args.corpus, args.repeat, tmp / "corpus.txt")
        print(f"corpus: {args.corpus.name} x{args.repeat} = {corpus.stat().st_size / 2**20:.1f} MiB, tokenizer "
              f"{args.tokenizer_path}, seq_length {args.seq_length}, cpu {os.cpu_count()} logical")
        raw_s, raw_tokens = raw_bpe(corpus, args.tokenizer_path, args.trials)
        print(f"raw tokenizers (in process, its own {os.cpu_count()} threads): {raw_s:6.2f} s "
              f"{raw_tokens / raw_s:12,.0f} tokens/s")
        for processes in sorted({1, args.processes_num}):
            ours_s = float("inf")
            for _ in range(args.trials):
                build_processor.cache_clear()  # each run loads its tokenizer (timed), as a command does
                seconds, meta = ours_in_process(corpus, args.tokenizer_path, tmp / "ours", args, processes)
                ours_s = min(ours_s, seconds)
            tokens = meta["counts"]["tokens"] + meta["counts"]["dropped_tokens"]
            assert tokens == raw_tokens, (tokens, raw_tokens)
            print(f"ours, {processes} process(es): {ours_s:6.2f} s {tokens / ours_s:12,.0f} tokens/s   "
                  f"ours/raw = {raw_s / ours_s:.2f}")
        wall, rss, _ = ours(corpus, args.tokenizer_path, tmp / "ours", args)
        print(f"ours (command, {args.processes_num} processes): {wall:6.2f} s  {tokens / wall:12,.0f} tokens/s   "
              f"peak RSS {rss:4.0f} MiB")


if __name__ == "__main__":
    main()
