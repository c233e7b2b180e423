"""Quality of weight-only int8: perplexity on held-out English text, float32 against int8, one run.

The model: ``--load_model_path`` + ``--config_path`` when given, else a small LLaMA (models/llama/tiny_config.json,
the LLaMA tokenizer) trained here for ``--steps`` steps on the first documents of wiki_demo_en.txt. A model
trained this briefly is far from a real LLM (perplexity in the hundreds), so the figure is a sanity measure of
the quantisation error on real activations, not a prediction of the change for a 7B model. The last
``--heldout_docs`` documents are never trained on and are what perplexity is measured on.

Run: ``python -m bench.int8_quality`` (about 10 minutes on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from tencentpretrain.checkpoint import load_model, save_state_dict
from tencentpretrain.config import ModelConfig
from tencentpretrain.generation import Engine, prepare_for_inference, quantize_int8
from tencentpretrain.model import Model, build_model
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as one stream of ``bos + tokens + eos``."""
    ids = []
    for doc in docs:
        ids += [tokenizer.bos_id] + tokenizer.encode(doc) + [tokenizer.eos_id]
    return torch.tensor(ids, dtype=torch.long)


def train(model: Model, stream: torch.Tensor, steps: int, batch: int, seq: int, lr: float) -> None:
    """A few hundred AdamW steps on random windows of ``stream`` (cosine decay, no warm-up)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=generator)
        window = torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])  # (B, seq + 1)
        loss, _ = model.loss({"src": window[:, :-1], "tgt": window[:, 1:]})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()


@torch.inference_mode()
def perplexity(model: Model, stream: torch.Tensor, seq: int) -> float:
    """exp(mean next-token loss) over consecutive windows of ``seq`` tokens."""
    total, count = 0.0, 0
    for start in range(0, len(stream) - 1, seq):
        window = stream[start:start + seq + 1][None]
        if window.shape[1] < 2:
            break
        logits = model(window[:, :-1]).float()  # (1, T, vocab)
        loss = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
        total, count = total + float(loss), count + window.shape[1] - 1
    return math.exp(total / count)


def decode_speed(model: Model, new_tokens: int = 64) -> float:
    """Greedy decode tokens/s at batch 1 (the faster of two runs)."""
    engine = Engine(prepare_for_inference(model))
    prompt = [[1] + list(range(100, 147))]
    engine.generate(prompt, 2)
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        engine.generate(prompt, new_tokens)
        best = min(best, time.perf_counter() - start)
    return new_tokens / best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load_model_path", help="a trained checkpoint (skips training)")
    parser.add_argument("--config_path", default=str(ROOT / "models" / "llama" / "tiny_config.json"))
    parser.add_argument("--spm_model_path", default=str(SHARED / "tokenizers" / "llama_tokenizer.model"))
    parser.add_argument("--corpus", default=str(SHARED / "corpora" / "wiki_demo_en.txt"))
    parser.add_argument("--heldout_docs", type=int, default=3, help="last documents kept for evaluation")
    parser.add_argument("--heldout_tokens", type=int, default=16384, help="evaluate on the first this many")
    parser.add_argument("--save_model_path", help="save the trained model here (reuse with --load_model_path)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = SentencePieceTokenizer(args.spm_model_path)
    docs = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    train_docs, heldout = docs[:-args.heldout_docs], docs[-args.heldout_docs:]
    if args.load_model_path:
        model = load_model(args.config_path, args.load_model_path)
    else:
        config = ModelConfig.from_json(args.config_path, dropout=0.0)
        model = build_model(config, tokenizer.vocab_size)
        train(model, token_stream(tokenizer, train_docs), args.steps, args.batch_size, args.seq_length, args.lr)
        if args.save_model_path:
            save_state_dict(model.state_dict(), args.save_model_path)
    heldout_stream = token_stream(tokenizer, heldout)[:args.heldout_tokens]
    variants = {"float32": model, "int8 (all linear layers)": quantize_int8(copy.deepcopy(model)),
                "int8 (LM head kept float32)": quantize_int8(copy.deepcopy(model), include_lm_head=False)}
    results = {}
    print(f"\nheld-out: {len(heldout)} documents, {len(heldout_stream)} tokens\n")
    print("| weights | perplexity | change | decode tok/s (batch 1) |\n|---|---|---|---|")
    for name, variant in variants.items():
        ppl = perplexity(variant, heldout_stream, args.seq_length)
        results[name] = ppl
        change = (ppl / results["float32"] - 1) * 100
        print(f"| {name} | {ppl:.3f} | {change:+.2f}% | {decode_speed(variant):.0f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
