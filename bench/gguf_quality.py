"""What each GGUF quantisation costs: file size, perplexity and greedy agreement, llama.cpp against our fp32 model.

    python -m bench.gguf_quality --load_model_path model.bin --config_path cfg.json --spm_model_path tok.model \\
        --text_path held_out.txt [--outtypes f32 f16 q8_0 q4_0] [--context 512] [--prompts 16] [--new_tokens 32]

Our own ``--int8`` engine and our ``--quant q8_0`` and ``--quant q4_0`` (the same blocks as llama.cpp's q8_0 and
q4_0 files, whose linear weights they hold byte for byte; perplexity through the PyTorch q8_0/q4_0 layers, greedy
tokens through the native kernel where it runs) are measured the same way, so those rows compare ours and
llama.cpp's on the same weights (under q4_0 the file holds the word embedding in q4_0, ours keeps it in float32).
The model (a checkpoint or a Hugging Face directory) is exported with ``scripts/convert_llama_from_tencentpretrain_
to_gguf.py`` once per outtype and run by llama.cpp through llama-cpp-python. Perplexity: the text's lines, each as
``bos + encode(line)``, joined and cut into windows of ``--context`` tokens, every token after the first of a window
scored. Greedy agreement: from the first 8 tokens of ``--prompts`` lines, ``--new_tokens`` greedy tokens of llama.cpp
and of our model; reported is the mean length of their common start over ``--new_tokens`` (1.0: identical).
llama.cpp keeps its key/value cache in f32 here, as ours, so that only the weights differ.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from tencentpretrain.generation import Engine, prepare_for_inference, quantize_int8
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.loading import load_generation_model
from tencentpretrain.generation.weights.prepare import BLOCK_QUANTS
from tencentpretrain.llamacpp import add_repack_arg, open_llama
from tencentpretrain.tokenizers import SentencePieceTokenizer

ROOT = Path(__file__).resolve().parents[1]


def windows(tokenizer, lines: list[str], context: int) -> list[list[int]]:
    stream = [t for line in lines for t in [tokenizer.bos_id] + tokenizer.encode(line)]
    return [stream[i:i + context] for i in range(0, len(stream) - 1, context) if len(stream[i:i + context]) > 1]


def nll(logits: np.ndarray, ids: list[int]) -> float:
    """Summed negative log-likelihood of ``ids[1:]`` under ``logits`` (T, vocab)."""
    logp = torch.log_softmax(torch.from_numpy(np.asarray(logits[: len(ids) - 1])).double(), -1)
    return -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()


def common_start(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(llama, chunks, prompts, new_tokens, ours_greedy) -> tuple[float, float, list[list[int]]]:
    """(perplexity, greedy agreement with ``ours_greedy``, its greedy tokens) of a llama-cpp-python model."""
    total = 0.0
    for ids in chunks:
        llama.reset()
        llama.eval(ids)
        total += nll(llama.scores[: len(ids)], ids)
    agree, greedy = [], []
    for prompt, want in zip(prompts, ours_greedy):
        got = [t for t, _ in zip(llama.generate(prompt, temp=0.0, reset=True), range(new_tokens))]
        agree.append(common_start(got, want) / new_tokens)
        greedy.append(got)
    return math.exp(total / sum(len(c) - 1 for c in chunks)), float(np.mean(agree)), greedy


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load_model_path", required=True)
    parser.add_argument("--config_path")
    parser.add_argument("--spm_model_path", required=True)
    parser.add_argument("--text_path", required=True, help="held-out text, one document or sentence a line")
    parser.add_argument("--outtypes", nargs="+", default=["f32", "f16", "q8_0", "q4_0"])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    add_repack_arg(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = SentencePieceTokenizer(args.spm_model_path)
    lines = [line for line in Path(args.text_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    chunks = windows(tokenizer, lines, args.context)
    prompts = [[tokenizer.bos_id] + tokenizer.encode(line)[:7] for line in lines[: args.prompts]]
    ours = load_generation_model(args.load_model_path, args.config_path, dtype=torch.float32)
    with torch.no_grad():
        ours_ppl = math.exp(sum(nll(ours(torch.tensor([c]))[0].numpy(), c) for c in chunks)
                            / sum(len(c) - 1 for c in chunks))
    ours_greedy = Engine(prepare_for_inference(ours)).generate(prompts, args.new_tokens)
    int8 = quantize_int8(copy.deepcopy(ours))
    with torch.no_grad():
        int8_ppl = math.exp(sum(nll(int8(torch.tensor([c]))[0].numpy(), c) for c in chunks)
                            / sum(len(c) - 1 for c in chunks))
    int8_greedy = Engine(prepare_for_inference(int8)).generate(prompts, args.new_tokens)
    int8_agree = np.mean([common_start(a, b) / args.new_tokens for a, b in zip(int8_greedy, ours_greedy)])
    blocks = {quant: block_quant(ours, quant, chunks, prompts, args) for quant in BLOCK_QUANTS}  # (ppl, greedy)
    convert = _script("convert_llama_from_tencentpretrain_to_gguf")
    rows = [f"| ours (PyTorch fp32) | - | {ours_ppl:.4f} | - | 1.00 |"]
    print(f"{sum(len(c) for c in chunks)} tokens in {len(chunks)} windows; {len(prompts)} prompts")
    rows.append(f"| ours --int8 (PyTorch) | - | {int8_ppl:.4f} | {100 * (int8_ppl / ours_ppl - 1):+.2f}% | "
                f"{int8_agree:.2f} |")
    for quant, (ppl, greedy) in blocks.items():
        agree = np.mean([common_start(a, b) / args.new_tokens for a, b in zip(greedy, ours_greedy)])
        rows.append(f"| ours --quant {quant} | - | {ppl:.4f} | {100 * (ppl / ours_ppl - 1):+.2f}% | {agree:.2f} |")
    print("| weights | GGUF size | perplexity | vs ours | greedy agreement |\n|---|---|---|---|---|")
    print("\n".join(rows))
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in args.outtypes:
            path = Path(tmp) / f"{outtype}.gguf"
            argv = ["--input_model_path", args.load_model_path, "--spm_model_path", args.spm_model_path,
                    "--output_model_path", str(path), "--outtype", outtype]
            convert(argv + (["--config_path", args.config_path] if args.config_path else []))
            llama = open_llama(path, args.llama_cpp_repack, n_ctx=args.context + args.new_tokens, logits_all=True,
                               n_threads=args.threads, type_k=0, type_v=0, verbose=False)  # f32 cache
            ppl, agree, greedy = measure(llama, chunks, prompts, args.new_tokens, ours_greedy)
            rows.append(f"| llama.cpp {outtype} | {path.stat().st_size / 2**20:.2f} MiB | {ppl:.4f} | "
                        f"{100 * (ppl / ours_ppl - 1):+.2f}% | {agree:.2f} |")
            print(rows[-1], flush=True)
            if outtype in blocks:  # the same weights on both sides: how often do the two engines agree?
                mine, my_greedy = blocks[outtype]
                same = np.mean([common_start(a, b) / args.new_tokens for a, b in zip(greedy, my_greedy)])
                rows.append(f"| (our {outtype} against llama.cpp {outtype}: perplexity "
                            f"{100 * (mine / ppl - 1):+.2f}%, greedy agreement {same:.2f}) | | | | |")
                print(rows[-1], flush=True)
    return rows


def block_quant(ours, quant: str, chunks, prompts, args) -> tuple[float, list[list[int]]]:
    """Perplexity (PyTorch layers) and greedy tokens (the native kernel where it runs) of our ``--quant quant``."""
    model = BLOCK_QUANTS[quant](copy.deepcopy(ours))
    with torch.no_grad():
        ppl = math.exp(sum(nll(model(torch.tensor([c]))[0].numpy(), c) for c in chunks)
                       / sum(len(c) - 1 for c in chunks))
    model = prepare_for_inference(copy.deepcopy(ours), layout="row", quant=quant)
    engine = Engine(model, choose_backend(model, args.threads))
    return ppl, engine.generate(prompts, args.new_tokens)


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


if __name__ == "__main__":
    sys.exit(main() and 0)
