"""Perplexity throughput: our evaluation (``window_nlls``, as ``scripts/evaluate.py --task perplexity`` runs it)
against transformers' forward pass over the same rolling windows, in one run.

Both score the same windows in the same batches (``rolling_windows`` of ``--seq_length``, grouped longest first,
``--batch_size`` at a time). transformers computes the full logits of every position, then the log-softmax of the
scored ones (as lm-evaluation-harness's ``HFLM`` does); ours runs the encoder, then the LM head on the scored
positions only. Reported: scored tokens per second of each, the ratio, and the relative difference of the two
total negative log-likelihoods (they must agree), in each dtype of ``--dtype`` (default: fp32, and bf16 where the
device has bf16 hardware, so the two are side by side with the machine named). One timed run each after a
one-batch warm-up; the order is alternated over ``--repeats`` and the fastest kept.

The documents are the English wiki corpus of ``../shared`` tokenized with the LLaMA tokenizer when present,
random tokens otherwise. Run: ``python -m bench.evaluate`` (``--sizes tiny`` for a quick look).

``--choice`` times multiple choice instead (needs the LLaMA tokenizer of ``../shared``): the hand-written C-Eval
questions of ``tests/data/ceval`` cycled to ``--questions`` prompts of ``--shots`` examples each; transformers'
forward over each whole prompt (logits of the last position read, as C-Eval's and lm-evaluation-harness's scripts
do), ours over whole prompts (``next_token_logits``), and ours as ``--task choice`` runs (header and examples once
per subject, then only the questions). Reported in prompts per second, with whether all three predict the same.
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

from bench.generate import SIZES, build_pair, size_config  # bench/generate.py: the same models
from bench.train import default_dtypes, machine  # bench/train.py: the same choice of dtypes
from tencentpretrain.evaluation.choice import ChoiceScorer, evaluate_subject
from tencentpretrain.evaluation.perplexity import rolling_windows
from tencentpretrain.evaluation.readers import LETTERS, read_choice_file
from tencentpretrain.evaluation.scoring import (
    Window,
    length_batches,
    next_token_logits,
    right_pad,
    window_nlls,
)
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.weights.layout import weight_layout

ROOT = Path(__file__).resolve().parents[1]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
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
def hf_nlls(hf, windows: list[Window], batch_size: int, pad_id: int, device=torch.device("cpu")) -> float:
    """Total NLL with transformers: full logits of each batch, log-softmax and gather at the scored positions."""
    total = 0.0
    for indices in length_batches([len(w.inputs) for w in windows], batch_size):
        batch = [windows[i] for i in indices]
        logits = hf(right_pad([w.inputs for w in batch], pad_id, device)).logits  # (B, T, vocab)
        for row, w in enumerate(batch):
            scored = logits[row, len(w.inputs) - len(w.targets):len(w.inputs)].float().log_softmax(-1)
            total -= float(scored.gather(1, torch.tensor(w.targets, device=device)[:, None]).double().sum())
    return total


def timed(run) -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = run()  # each side ends on a .item()/float(): the device has finished
    return time.perf_counter() - start, value


def bench_size(name: str, dtype_name: str, args) -> tuple[str, float, float]:
    """One table row, and the tokens/s of transformers and of ours."""
    config = size_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(config, Path(tmp))
    params = sum(p.numel() for p in hf.parameters()) / 1e6  # before packing drops the dense weights of ours
    device, dtype = torch.device(args.device), DTYPES[dtype_name]
    hf, ours = hf.to(device, dtype), ours.to(device, dtype)
    layout = weight_layout("auto", args.batch_size, device, dtype)
    engine = Engine(prepare_for_inference(ours, layout=layout, batch_size=args.batch_size))  # as load_engine
    docs, source = documents(args.tokens, config.vocab_size)
    windows = [w for doc in docs for w in rolling_windows(doc, 1, args.seq_length)]
    scored = sum(len(w.targets) for w in windows)
    runners = {"transformers": lambda: hf_nlls(hf, windows, args.batch_size, 0, device),
               "ours": lambda: math.fsum(window_nlls(engine.model, windows, args.batch_size, 0))}
    for run_warm in (lambda: hf_nlls(hf, windows[:1], 1, 0, device),
                     lambda: window_nlls(engine.model, windows[:1], 1, 0)):
        run_warm()
    times = {key: [] for key in runners}
    nll = {}
    for _ in range(args.repeats):
        for key, run in runners.items():
            seconds, nll[key] = timed(run)
            times[key].append(seconds)
    hf_tps, our_tps = (scored / min(times[key]) for key in ("transformers", "ours"))
    diff = abs(nll["ours"] - nll["transformers"]) / abs(nll["transformers"])
    row = (f"| {name} ({params:.0f}M) | {dtype_name} | {args.seq_length} | {args.batch_size} | {scored} ({source}) | "
           f"{hf_tps:.0f} | {our_tps:.0f} | **{our_tps / hf_tps:.2f}x** | {diff:.1e} |")
    print(row, flush=True)
    return row, hf_tps, our_tps


def choice_inputs(args) -> tuple:
    """(tokenizer, questions, examples) of the choice benchmark: tests/data/ceval cycled to ``--questions``."""
    from tencentpretrain.tokenizers import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer(SHARED / "tokenizers" / "llama_tokenizer.model")
    data = ROOT / "tests" / "data" / "ceval"
    pool = [q for f in sorted((data / "val").glob("*.csv")) for q in read_choice_file(f)]
    questions = [pool[i % len(pool)] for i in range(args.questions)]
    questions = [type(q)(str(i), q.question, q.options, q.answer, q.line) for i, q in enumerate(questions)]
    examples = read_choice_file(data / "dev" / "computer_network_dev.csv")[:args.shots]
    return tokenizer, questions, examples


@torch.inference_mode()
def hf_choices(hf, prompts: list[list[int]], letter_ids: list[list[int]], batch_size: int) -> list[str]:
    """transformers: full logits of each right-padded batch of whole prompts, the last real position read."""
    out = [""] * len(prompts)
    for indices in length_batches([len(p) for p in prompts], batch_size):
        logits = hf(right_pad([prompts[i] for i in indices], 0, torch.device("cpu"))).logits  # (B, T, vocab)
        for row, i in enumerate(indices):
            out[i] = LETTERS[int(logits[row, len(prompts[i]) - 1, letter_ids[i]].argmax())]
    return out


def bench_choice(name: str, args) -> str:
    """One table row of the multiple-choice benchmark."""
    config = size_config(name)
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(config, Path(tmp))
    params = sum(p.numel() for p in hf.parameters()) / 1e6
    layout = weight_layout("auto", args.batch_size)
    engine = Engine(prepare_for_inference(ours, layout=layout, batch_size=args.batch_size))
    tokenizer, questions, examples = choice_inputs(args)
    scorer = ChoiceScorer(tokenizer, "zh", "continuation", config.max_seq_length)
    prepared = [scorer.prepare(q, examples, "计算机网络") for q in questions]
    prompts, letters = [p[0] for p in prepared], [p[1] for p in prepared]
    runners = {
        "transformers": lambda: hf_choices(hf, prompts, letters, args.batch_size),
        "ours, whole prompts": lambda: [LETTERS[max(range(4), key=s.__getitem__)] for s in next_token_logits(
            engine.model, prompts, letters, args.batch_size, tokenizer.pad_id)],
        "ours, --task choice": lambda: list(evaluate_subject(engine.model, scorer, "computer_network", questions,
                                                             examples, "计算机网络", args.batch_size)
                                            .predictions.values()),
    }
    times, answers = {key: [] for key in runners}, {}
    for _ in range(args.repeats):
        for key, run in runners.items():
            seconds, answers[key] = timed(run)
            times[key].append(seconds)
    rates = [len(questions) / min(times[key]) for key in runners]
    same = len({tuple(a) for a in answers.values()}) == 1
    tokens = sum(map(len, prompts)) / len(prompts)
    row = (f"| {name} ({params:.0f}M) | {args.shots} | {len(questions)} ({tokens:.0f} tokens each) | {args.batch_size} "
           f"| {rates[0]:.3g} | {rates[1]:.3g} | {rates[2]:.3g} | **{rates[2] / rates[0]:.2f}x** | {same} |")
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda (perplexity only)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None,
                        help="weights of both models, each in turn (perplexity only; default: fp32, and bf16 where "
                             "the device has bf16 hardware)")
    parser.add_argument("--choice", action="store_true", help="time multiple choice instead of perplexity")
    parser.add_argument("--questions", type=int, default=32, help="prompts of the choice benchmark")
    parser.add_argument("--shots", type=int, default=3, help="examples in each prompt of the choice benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.choice:
        header = ("| model | shots | prompts | batch | HF prompts/s | ours whole prompts/s | ours --task choice "
                  "prompts/s | speed-up | same answers |")
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        return [bench_choice(name, args) for name in args.sizes]
    device = torch.device(args.device)
    dtypes = args.dtype or default_dtypes(device)
    print(f"machine: {machine(device)}; {args.threads} threads")
    header = ("| model | dtype | seq_length | batch | tokens scored | HF tok/s | ours tok/s | speed-up | "
              "NLL rel. diff |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results = {(name, dtype): bench_size(name, dtype, args) for name in args.sizes for dtype in dtypes}
    for name in args.sizes:
        if "fp32" in dtypes and "bf16" in dtypes:
            (_, hf32, ours32), (_, hf16, ours16) = results[name, "fp32"], results[name, "bf16"]
            print(f"{name} bf16/fp32: ours {ours16 / ours32:.2f}x, transformers {hf16 / hf32:.2f}x")
    return [row for row, _, _ in results.values()]


if __name__ == "__main__":
    sys.exit(main() and 0)
