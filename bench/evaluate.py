"""Perplexity throughput: our evaluation (``window_nlls``, as ``scripts/evaluate.py --task perplexity`` runs it)
against transformers' forward pass over the same rolling windows, in one run.

Both score the same windows in the same batches (``rolling_windows`` of ``--seq_length``, grouped longest first,
``--batch_size`` at a time). transformers computes the full logits of every position, then the log-softmax of the
scored ones (as lm-evaluation-harness's ``HFLM`` does); ours runs the encoder, then the LM head on the scored
positions only. Reported: scored tokens per second of each, the ratio, and the relative difference of the two
total negative log-likelihoods (they must agree). One timed run each after a one-batch warm-up; the order is
alternated over ``--repeats`` and the fastest kept.

The documents are the English wiki corpus of ``../shared`` tokenized with the LLaMA tokenizer when present,
random tokens otherwise. Run: ``python bench/evaluate.py`` (``--sizes tiny`` for a quick look).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without installing
sys.path.insert(0, str(ROOT / "bench"))

from generate import SIZES, build_pair, size_config  # noqa: E402  (bench/generate.py: the same models)

from tencentpretrain.evaluation.perplexity import rolling_windows  # noqa: E402
from tencentpretrain.evaluation.scoring import Window, length_batches, right_pad, window_nlls  # noqa: E402
from tencentpretrain.generation import Engine  # noqa: E402
from tencentpretrain.generation.layout import weight_layout  # noqa: E402

SHARED = Path(os.environ.get("TP_SHARED_DIR", ROOT.parent / "shared")) / "data"


def documents(tokens: int, vocab: int) -> tuple[list[list[int]], str]:
    """Token ids of documents totalling about ``tokens``, and where they came from."""
    corpus, spm = SHARED / "corpora" / "wiki_demo_en.txt", SHARED / "tokenizers" / "llama_tokenizer.model"
    if corpus.is_file() and spm.is_file() and vocab == 32000:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
        docs, total = [], 0
        for line in corpus.read_text(encoding="utf-8").splitlines():
            ids = sp.encode(line.strip())[:tokens - total]
            docs.append(ids)
            total += len(ids)
            if total >= tokens:
                break
        return docs, "wiki_demo_en.txt (LLaMA tokenizer)"
    g = torch.Generator().manual_seed(0)
    lengths = [tokens // 4] * 4
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths], "random tokens"


@torch.inference_mode()
def hf_nlls(hf, windows: list[Window], batch_size: int, pad_id: int) -> float:
    """Total NLL with transformers: full logits of each batch, log-softmax and gather at the scored positions."""
    total = 0.0
    for indices in length_batches([len(w.inputs) for w in windows], batch_size):
        batch = [windows[i] for i in indices]
        logits = hf(right_pad([w.inputs for w in batch], pad_id, torch.device("cpu"))).logits  # (B, T, vocab)
        for row, w in enumerate(batch):
            scored = logits[row, len(w.inputs) - len(w.targets):len(w.inputs)].float().log_softmax(-1)
            total -= float(scored.gather(1, torch.tensor(w.targets)[:, None]).double().sum())
    return total


def timed(run) -> tuple[float, float]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def bench_size(name: str, args) -> str:
    """One table row."""
    config = size_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(config, Path(tmp))
    params = sum(p.numel() for p in hf.parameters()) / 1e6  # before packing drops the dense weights of ours
    engine = Engine(ours, layout=weight_layout("auto", args.batch_size), batch_size=args.batch_size)  # as load_engine
    docs, source = documents(args.tokens, config.vocab_size)
    windows = [w for doc in docs for w in rolling_windows(doc, 1, args.seq_length)]
    scored = sum(len(w.targets) for w in windows)
    runners = {"transformers": lambda: hf_nlls(hf, windows, args.batch_size, 0),
               "ours": lambda: math.fsum(window_nlls(engine.model, windows, args.batch_size, 0))}
    for run_warm in (lambda: hf_nlls(hf, windows[:1], 1, 0), lambda: window_nlls(engine.model, windows[:1], 1, 0)):
        run_warm()
    times = {key: [] for key in runners}
    nll = {}
    for _ in range(args.repeats):
        for key, run in runners.items():
            seconds, nll[key] = timed(run)
            times[key].append(seconds)
    hf_tps, our_tps = (scored / min(times[key]) for key in ("transformers", "ours"))
    diff = abs(nll["ours"] - nll["transformers"]) / abs(nll["transformers"])
    row = (f"| {name} ({params:.0f}M) | {args.seq_length} | {args.batch_size} | {scored} ({source}) | {hf_tps:.0f} | "
           f"{our_tps:.0f} | **{our_tps / hf_tps:.2f}x** | {diff:.1e} |")
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "100m"], choices=sorted(SIZES))
    parser.add_argument("--seq_length", type=int, default=512, help="window length")
    parser.add_argument("--batch_size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens scored (documents cut to this total)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per implementation (fastest reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both implementations")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    header = ("| model | seq_length | batch | tokens scored | HF tok/s | ours tok/s | speed-up | NLL rel. diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    return [bench_size(name, args) for name in args.sizes]


if __name__ == "__main__":
    sys.exit(main() and 0)
