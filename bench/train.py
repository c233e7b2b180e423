"""Training speed: our model against transformers' LlamaForCausalLM, side by side in one run.

Both models get the same architecture, the same weights (copied through our HF key map, so the first losses must
agree) and the same batches. By default each trains as its users would run it: ours with the optimizer pretrain.py
builds (fused AdamW where the device has one), transformers' with a plain ``torch.optim.AdamW``; ``--adamw`` gives
both the same implementation instead, to compare the models alone. Rounds alternate which model goes first
(AB, BA, AB, ...) so machine noise hits both; each side's tokens/s is the median over rounds. MFU is measured against
the best FLOP/s of a large matmul timed on the same device in the same dtype.

Each dtype of ``--dtype`` is measured in turn (default: fp32, and bf16 where the device has bf16 hardware: a GPU, or a
CPU with AVX512-BF16 or AMX; on AVX2-only CPUs bf16 is emulated, hundreds of times slower, and left out unless
asked), and a closing table puts them side by side with the machine named.

    python -m bench.train                                    # CPU, vocab 32000: fp32, and bf16 where the CPU has it
    python -m bench.train --vocab_size 4096                  # the transformer layers dominate instead of the head
    python -m bench.train --device cuda --dtype bf16 --preset gpu_1b --batch_size 8 --seq_length 2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from tencentpretrain import ModelConfig, build_model
from tencentpretrain.convert.llama import LLAMA_ARCHITECTURE, config_to_hf, ours_to_hf
from tencentpretrain.hardware import cpu
from tencentpretrain.training.flops import measure_matmul_peak, mfu, model_flops_per_token
from tencentpretrain.training.optim import build_adamw, param_groups

PRESETS = {  # sizes only; the rest is LLaMA's architecture
    "cpu": dict(hidden_size=512, feedforward_size=1376, heads_num=8, layers_num=4),
    "gpu_1b": dict(hidden_size=2048, feedforward_size=5632, heads_num=16, layers_num=22, local_kv_heads_num=4),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="Model config JSON (a LLaMA architecture); overrides --preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="Built-in model size.")
    parser.add_argument("--vocab_size", type=int, default=32000, help="Rows of the embedding and the LM head.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="Alternating measurement rounds.")
    parser.add_argument("--steps", type=int, default=2, help="Timed training steps per model per round.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per model first.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None,
                        help="Parameter and compute dtypes of both models, measured in turn (default: fp32, and bf16 "
                             "where the device has bf16 hardware).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--adamw", choices=("as-used", "default", "foreach", "fused"), default="as-used",
                        help="as-used: ours with the framework's optimizer (fused AdamW where the device has it), "
                             "transformers with a plain torch.optim.AdamW; otherwise this AdamW for both.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> ModelConfig:
    """The architecture to measure, with dropout off (transformers' Llama has none)."""
    if args.config:
        return ModelConfig.from_json(args.config, dropout=0.0, vocab_size=args.vocab_size,
                                     max_seq_length=max(args.seq_length, 16))
    return ModelConfig.from_dict({**LLAMA_ARCHITECTURE, **PRESETS[args.preset], "emb_size": PRESETS[args.preset][
        "hidden_size"], "max_seq_length": args.seq_length, "vocab_size": args.vocab_size})


def build_pair(config: ModelConfig, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our model and transformers' LlamaForCausalLM (sdpa, no KV cache) holding the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = build_model(config)
    hf_config = LlamaConfig(**{**config_to_hf(config, config.vocab_size, torch.float32), "use_cache": False})
    theirs = LlamaForCausalLM(hf_config)
    theirs.load_state_dict(ours_to_hf(ours.state_dict(), config), strict=True)
    theirs.config._attn_implementation = "sdpa"
    return ours.to(device, dtype).train(), theirs.to(device, dtype).train()


def make_optimizer(model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    options = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(kind, {})
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **options)


def framework_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer pretrain.py builds: decay groups by rule, fused AdamW where the device has it."""
    device = next(model.parameters()).device
    return build_adamw(param_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, device=device)


def step_fns(ours, theirs, adamw: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """One training step each, ``(src, tgt) -> loss``; transformers is given the already shifted targets."""
    if adamw == "as-used":
        optimizers = {"ours": framework_optimizer(ours), "transformers": make_optimizer(theirs, "default")}
    else:
        optimizers = {"ours": make_optimizer(ours, adamw), "transformers": make_optimizer(theirs, adamw)}

    def train_step(name: str, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        def step(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            optimizers[name].zero_grad(set_to_none=True)
            loss = forward(src, tgt)
            loss.backward()
            optimizers[name].step()
            return loss.detach()

        return step

    return {
        "ours": train_step("ours", lambda src, tgt: ours.loss({"src": src, "tgt": tgt})[0]),
        "transformers": train_step("transformers", lambda src, tgt: theirs(
            input_ids=src, labels=tgt, shift_labels=tgt, use_cache=False).loss),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Seconds for one step on each batch."""
    synchronize(device)
    start = time.perf_counter()
    for src, tgt in batches:
        step(src, tgt)
    synchronize(device)
    return time.perf_counter() - start


def measure(steps: dict, batches: list, args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Tokens/s of each model in every round, the order alternating between rounds."""
    tokens = args.batch_size * args.seq_length * len(batches)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in order:
            rates[name].append(tokens / timed_steps(steps[name], batches, device))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{name} {rates[name][-1]:,.0f} tok/s" for name in steps), flush=True)
    return rates


def check_first_losses(steps: dict, src: torch.Tensor, tgt: torch.Tensor, dtype: torch.dtype) -> None:
    """Both models start from the same weights: their first losses must agree (else the comparison is void)."""
    losses = {name: float(step(src, tgt)) for name, step in steps.items()}
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    print("first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    if abs(losses["ours"] - losses["transformers"]) > tolerance * max(1.0, abs(losses["ours"])):
        raise SystemExit(f"bench/train.py: error: first losses differ {losses}: the models do not compute the same")


def report(rates: dict[str, list[float]], config: ModelConfig, args: argparse.Namespace,
           peak: float) -> dict[str, float]:
    """Print each model's median tokens/s and MFU and their ratio; return the medians and MFUs."""
    flops = model_flops_per_token(config, args.seq_length)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        share = 100 * mfu(rate, flops, peak)
        print(f"{name:>13}: {rate:,.0f} tokens/s (median of {len(rates[name])}), MFU {share:.1f}%")
    ratios = [a / b for a, b in zip(rates["ours"], rates["transformers"], strict=True)]
    print(f"ratio ours/transformers: {medians['ours'] / medians['transformers']:.3f} "
          f"(per-round ratios: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"model FLOPs/token {flops / 1e6:.1f} M; measured matmul peak {peak / 1e9:.1f} GFLOP/s")
    return {**medians, "mfu": mfu(medians["ours"], flops, peak), "peak": peak}


def machine(device: torch.device) -> str:
    """The device as the closing table names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu().kind()


def default_dtypes(device: torch.device) -> list[str]:
    """fp32, and bf16 where the device has bf16 hardware (else bf16 is emulated and would take hours)."""
    if device.type == "cuda" or cpu().bf16:
        return ["fp32", "bf16"]
    print(f"bf16 left out: {cpu().kind()} has no bf16 hardware (ask with --dtype fp32 bf16)")
    return ["fp32"]


def bench_dtype(config: ModelConfig, args: argparse.Namespace, device: torch.device, name: str) -> dict[str, float]:
    """Build both models in dtype ``name``, check their first losses agree, time them; the medians and MFU."""
    dtype = DTYPES[name]
    torch.manual_seed(args.seed)
    ours, theirs = build_pair(config, args.device, dtype)
    params = sum(p.numel() for p in ours.parameters())
    print(f"== {name}: hidden {config.hidden_size}, layers {config.layers_num}, heads {config.heads_num}/"
          f"{config.kv_heads_num}, ffn {config.feedforward_size}, vocab {config.vocab_size}, {params / 1e6:.1f} M "
          f"params; batch {args.batch_size} x seq {args.seq_length}; {args.device}, "
          f"{torch.get_num_threads()} threads, AdamW {args.adamw}; torch {torch.__version__}")
    data = torch.randint(0, config.vocab_size, (args.steps + 1, args.batch_size, args.seq_length + 1), device=device)
    batches = [(row[:, :-1].contiguous(), row[:, 1:].contiguous()) for row in data]
    steps = step_fns(ours, theirs, args.adamw)
    check_first_losses(steps, *batches[-1], dtype)
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step(*batches[-1])
    rates = measure(steps, batches[:-1], args, device)
    return report(rates, config, args, measure_matmul_peak(device, dtype))


def side_by_side(results: dict[str, dict[str, float]], device: torch.device) -> None:
    """The closing table: each dtype's tokens/s, ratio and MFU, and bf16 against fp32 for each model."""
    print(f"\nmachine: {machine(device)}")
    print("| dtype | ours tok/s | transformers tok/s | ours/transformers | ours MFU | matmul peak GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ours']:,.0f} | {r['transformers']:,.0f} | {r['ours'] / r['transformers']:.2f}x | "
              f"{100 * r['mfu']:.1f}% | {r['peak'] / 1e9:,.0f} |")
    if "fp32" in results and "bf16" in results:
        fp32, bf16 = results["fp32"], results["bf16"]
        print(f"bf16/fp32: ours {bf16['ours'] / fp32['ours']:.2f}x, "
              f"transformers {bf16['transformers'] / fp32['transformers']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in each dtype and print tokens/s, the ratio and MFU, then the dtypes side by side."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = bench_config(args)
    results = {name: bench_dtype(config, args, device, name) for name in args.dtype or default_dtypes(device)}
    side_by_side(results, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
