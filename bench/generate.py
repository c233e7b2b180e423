"""Generation speed: our KV-cached engine against transformers' ``generate`` on the same weights, in one run.

For each model size and batch size both implementations run the same left-padded prompts greedily (no eos, so
every row makes exactly ``--new_tokens`` tokens). Reported per implementation, the fastest of ``--repeats``
runs taken in alternation (the machine is shared: the minimum is the least disturbed run, as ``timeit`` does):

- TTFT: time to first token, i.e. a call that generates one token (tokenise-free: prefill plus one step).
- decode tok/s: ``B * (N - 1)`` tokens over (time of an N-token call - time of a 1-token call).

Both use ``torch.set_num_threads(--threads)`` and fp32 on CPU. Run: ``python -m bench.generate``
(``--sizes tiny`` for a quick look; ``--int8`` adds our int8 engine as a third column; ``--layout column packed``
times our engine with each weight layout, one row each, against transformers afresh; ``--native`` has our engine
decode natively (generation/native/, run_llama.py's default) instead of in PyTorch, see also ``bench/threads.py``
for one and several threads side by side; ``--llama_cpp`` adds a table of
llama.cpp through llama-cpp-python against our engine on the same weights, see ``bench/generate_llama_cpp.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from tencentpretrain.config import ModelConfig
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.engine import left_pad
from tencentpretrain.generation.loading import load_generation_model
from tencentpretrain.generation.weights.layout import LAYOUTS, packing_available, weight_layout
from tencentpretrain.llamacpp import add_repack_arg

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"embedding": ["word"], "encoder": "transformer", "target": ["lm"], "mask": "causal",
         "layernorm_positioning": "pre", "layernorm": "rms", "feed_forward": "gated", "hidden_act": "silu",
         "remove_transformer_bias": True, "remove_embedding_layernorm": True, "rotary_position_embedding": True,
         "dropout": 0.0, "max_seq_length": 2048, "vocab_size": 32000}
SIZES = {  # "tiny" is models/llama/tiny_config.json when it exists
    "tiny": dict(LLAMA, emb_size=256, hidden_size=256, feedforward_size=688, heads_num=8, layers_num=4),
    "100m": dict(LLAMA, emb_size=768, hidden_size=768, feedforward_size=2048, heads_num=12, local_kv_heads_num=4,
                 layers_num=8),
    "1b": dict(LLAMA, emb_size=2048, hidden_size=2048, feedforward_size=5632, heads_num=16, local_kv_heads_num=4,
               layers_num=22),  # for GPUs (bench/evaluate.py --device cuda)
}


def size_config(name: str) -> ModelConfig:
    """The benchmark's config for a size name, with the LLaMA vocabulary."""
    tiny_file = ROOT / "models" / "llama" / "tiny_config.json"
    if name == "tiny" and tiny_file.is_file():
        return ModelConfig.from_json(tiny_file, vocab_size=32000, dropout=0.0)
    return ModelConfig.from_dict(SIZES[name], source=f"bench size {name}")


def build_pair(config: ModelConfig, workdir: Path):
    """A random transformers LlamaForCausalLM and our model converted from its saved directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tencentpretrain.convert.llama import config_to_hf

    hf_dict = config_to_hf(config, config.vocab_size, torch.float32)
    hf_dict.update(initializer_range=0.2, eos_token_id=None)
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in hf_dict.items() if k != "torch_dtype"})).eval()
    hf.save_pretrained(workdir)
    return hf, load_generation_model(workdir)


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``batch`` prompts of 24 to 64 random tokens, each starting with bos (1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(24, 65, (batch,), generator=g).tolist() if batch > 1 else [48]
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in lengths]


def hf_runner(hf, prompts: list[list[int]]):
    """A function generating ``n`` tokens with transformers (left padding, greedy, KV cache)."""
    ids, real = left_pad(prompts, pad_id=0)
    mask, width = real.long(), ids.shape[1]

    def run(n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=0, eos_token_id=None, use_cache=True)
        return out[:, width:].tolist()

    return run


def ours_runner(engine: Engine, prompts: list[list[int]]):
    """A function generating ``n`` tokens with our engine."""
    return lambda n: engine.generate(prompts, n)


def timed(run, n: int) -> float:
    start = time.perf_counter()
    run(n)
    return time.perf_counter() - start


def rounds(runners: dict, new_tokens: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """The times (s) of 1 and of ``new_tokens`` tokens of each runner in each of ``repeats`` rounds, each round
    running every runner in turn (after one warm-up run each)."""
    for run in runners.values():  # warm-up
        run(2)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append((timed(run, 1), timed(run, new_tokens)))
    return times


def decode_rate(first: float, full: float, batch: int, new_tokens: int) -> float:
    """Decode tokens/s from the times (s) of 1 and of ``new_tokens`` tokens for ``batch`` rows."""
    return batch * (new_tokens - 1) / max(full - first, 1e-9)


def fastest(times: list[tuple[float, float]]) -> tuple[float, float]:
    """The fastest time of 1 token and the fastest of all of them over a runner's ``rounds``."""
    return min(t for t, _ in times), min(t for _, t in times)


def measure(runners: dict, batch: int, new_tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Fastest TTFT (s) and decode tokens/s of each runner, runs alternating between runners (``rounds``)."""
    out = {}
    for name, times in rounds(runners, new_tokens, repeats).items():
        ttft, total = fastest(times)
        out[name] = (ttft, decode_rate(ttft, total, batch, new_tokens))
    return out


def bench_size(name: str, args) -> list[str]:
    """Table rows for one model size."""
    config = size_config(name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(config, Path(tmp))
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    int8_engine = Engine(prepare_for_inference(load_copy(ours), int8=True)) if args.int8 else None
    for batch in args.batches:
        for choice in args.layout:
            rows.append(bench_row(name, params, hf, ours, int8_engine, batch, weight_layout(choice, batch), args))
    return rows


def bench_row(name: str, params: float, hf, ours, int8_engine, batch: int, layout: str, args) -> str:
    """One table row: transformers against a copy of our model in ``layout`` (and ``int8_engine``), one batch."""
    model = prepare_for_inference(load_copy(ours), layout=layout, batch_size=batch)
    engine = Engine(model, choose_backend(model, args.threads, native=args.native))  # as run_llama.py's --threads
    prompts = prompts_for(batch, ours.vocab_size)
    runners = {"transformers": hf_runner(hf, prompts), "ours": ours_runner(engine, prompts)}
    if int8_engine is not None:
        runners["ours-int8"] = ours_runner(int8_engine, prompts)
    same = runners["ours"](args.new_tokens) == runners["transformers"](args.new_tokens)
    result = measure(runners, batch, args.new_tokens, args.repeats)
    (hf_ttft, hf_tps), (our_ttft, our_tps) = result["transformers"], result["ours"]
    row = (f"| {name} ({params:.0f}M) | {batch} | {layout} | {hf_tps:.0f} | {our_tps:.0f} | "
           f"**{our_tps / hf_tps:.2f}x** | {hf_ttft * 1e3:.1f} | {our_ttft * 1e3:.1f} | "
           f"{hf_ttft / our_ttft:.2f}x | {same} |")
    if int8_engine is not None:
        row += f" {result['ours-int8'][1]:.0f} |"
    print(row, flush=True)
    return row


def load_copy(model):
    """A deep copy of a model (quantisation replaces modules in place)."""
    import copy

    return copy.deepcopy(model)


def llama_cpp_table(args) -> list[str]:
    """``--llama_cpp``: llama.cpp against our fp32 and int8 engines at batch 1, one row per size and thread count."""
    from bench.generate_llama_cpp import HEADER, llama_cpp_rows

    print(f"\n{HEADER}\n|" + "---|" * (HEADER.count("|") - 1))
    rows = []
    for name in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            _, ours = build_pair(size_config(name), Path(tmp))
        rows += llama_cpp_rows(name, ours, args, measure, ours_runner, prompts_for)
    return rows


def quant_table(args) -> list[str]:
    """``--quant q8_0|q4_0 --llama_cpp``: our native engine in that quantisation against llama.cpp's (and our fp32),
    per size."""
    from bench.generate_llama_cpp import llama_cpp_quant_rows, quant_header
    from tencentpretrain.hardware import cpu

    header = quant_header(args.quant)
    print(f"{cpu().kind()}\n\n{header}\n|" + "---|" * (header.count("|") - 1))
    rows = []
    for name in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            _, ours = build_pair(size_config(name), Path(tmp))
        rows += llama_cpp_quant_rows(name, ours, args, measure, ours_runner, prompts_for)
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "100m"], choices=sorted(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per row in the timed runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (fastest reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both implementations")
    parser.add_argument("--native", action="store_true",
                        help="our engine decodes natively on the --threads, as run_llama.py and the server do by "
                             "default (generation/native/); without it, in PyTorch")
    parser.add_argument("--int8", action="store_true", help="also time our engine with int8 weights")
    parser.add_argument("--layout", nargs="+", choices=("auto",) + LAYOUTS, default=["auto"],
                        help="our engine's weight layouts, one row each (auto: as inference/run_llama.py picks for "
                             "the batch size)")
    parser.add_argument("--llama_cpp", action="store_true",
                        help="also time llama.cpp (llama-cpp-python) f32 and q8_0 against our fp32 and int8 at batch 1")
    parser.add_argument("--quant", choices=("q8_0", "q4_0"), default=None,
                        help="with --llama_cpp: our native engine in q8_0 or q4_0 against llama.cpp's of the same "
                             "GGUF file (batch 1 on each --llama_cpp_threads, then --batches above 1), instead of the "
                             "tables against transformers")
    parser.add_argument("--llama_cpp_threads", nargs="+", type=int, default=[1, 2],
                        help="thread counts of the --llama_cpp table (both sides)")
    add_repack_arg(parser)
    args = parser.parse_args(argv)
    if args.llama_cpp and importlib.util.find_spec("llama_cpp") is None:
        parser.error("--llama_cpp needs llama-cpp-python: pip install llama-cpp-python")
    if not packing_available() and {"packed", "both"} & set(args.layout):
        parser.error("this PyTorch build has no oneDNN: only --layout column (or auto) can run")
    if args.quant and not args.llama_cpp:
        parser.error(f"--quant {args.quant} is a table against llama.cpp: add --llama_cpp")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quant:
        return quant_table(args)
    header = ("| model | batch | our layout | HF decode tok/s | ours decode tok/s | decode speed-up | HF TTFT ms | "
              "ours TTFT ms | TTFT speed-up | same tokens |" + (" ours-int8 decode tok/s |" if args.int8 else ""))
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    for name in args.sizes:
        rows += bench_size(name, args)
    if args.llama_cpp:
        rows += llama_cpp_table(args)
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
