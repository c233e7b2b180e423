"""The continuous batcher in-process, timed in CPU seconds: what a step costs, and a whole load, batch 8 against 1.

On a shared machine wall time measures the other tenants as much as the code; the CPU time of this process (one
thread: ``torch.set_num_threads(1)``) counts only the cycles it got, so these figures move far less with the load
than ``bench/serve.py``'s. Two parts, on a random model of a ``bench/generate.py`` size (default ``100m``), weights
laid out as the server lays them out for the batch size (``auto``: ``row`` wherever decoding is native):

- **passes**: one forward pass of the batcher's kind (``cache/ragged.py``, ``Engine.read``), the fastest of
  ``--repeats``, through PyTorch and natively (generation/native/; where it runs): a prompt chunk of ``--chunk``
  tokens alone, ``k`` chunks of different prompts in one pass, ``R`` running rows alone, and the same ``R`` rows
  with a chunk in one pass. Prompt tokens/s = chunk tokens over the pass's CPU time (wall time with ``--threads``
  above 1).
- **load**: ``--clients`` simulated clients submit the requests of ``bench/serve.py``'s workload (prompt and answer
  lengths drawn the same way, token ids at random, no eos: each request makes exactly its ``max_tokens``), each its
  next one when its previous one ends, to a ``Batcher`` stepped in this thread; for each ``--batch_sizes`` the
  generated tokens per CPU second and per wall second, TTFT p50/p95 in CPU seconds, the passes, and the wall
  seconds spent in passes with prompt chunks and in plain decoding steps. No HTTP, no tokenizer: only the scheduling
  and the model. ``--threads 2`` runs both on two threads (then compare wall seconds).

Run: ``python -m bench.batching`` (both parts), ``--requests 16 --prompt_tokens 16 64 --max_tokens 64 128`` for the
decode-heavier mix, ``--size tiny`` for a quick look.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from bench.generate import size_config
from tencentpretrain.generation import Engine, prepare_for_inference
from tencentpretrain.generation.backend import choose_backend
from tencentpretrain.generation.native import NativeBackend, native_unavailable
from tencentpretrain.generation.scheduler import Batcher, Request
from tencentpretrain.generation.weights.layout import weight_layout
from tencentpretrain.model import build_model


def cpu_best(run, repeats: int, clock=time.process_time) -> float:
    """The least time (s) on ``clock`` (default: this process's CPU time) of ``repeats`` calls of ``run`` after one
    warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def one_pass(engine: Engine, rows: int, chunks: int, chunk: int, context: int = 128) -> torch.Tensor:
    """A ragged pass: ``rows`` running rows (``context`` columns each) and ``chunks`` chunks of ``chunk`` tokens of
    different prompts, each after ``chunk`` tokens already read; the logits of each row and each chunk's last
    token."""
    from tencentpretrain.cache.ragged import RaggedPass  # here: --part load also runs on the older batcher
    from tencentpretrain.cache.slots import SlotCache

    config, vocab = engine.config, engine.model.vocab_size
    slots = SlotCache(config.layers_num, max(rows, 1), config.kv_heads_num, context + 2, config.head_dim)
    slots.rows, slots.length = rows, context
    slots.mask[:rows, :context] = True
    caches = []
    for _ in range(chunks):
        cache = engine.new_cache(1, 2 * chunk)
        cache.advance(chunk)
        caches.append(cache)
    ragged = RaggedPass(slots, rows, [(cache, chunk) for cache in caches])
    tokens = rows + chunks * chunk
    ids = torch.randint(3, vocab, (1, tokens))
    positions = torch.tensor([[context] * rows + list(range(chunk, 2 * chunk)) * chunks])
    with torch.inference_mode():
        ends = list(range(rows)) + [rows + (i + 1) * chunk - 1 for i in range(chunks)]
        return engine.backend.read(ids, positions, ragged, ends)


def passes(engine: Engine, layout: str, args) -> None:
    """The table of single passes, each through PyTorch and natively (when the engine decodes natively)."""
    chunk, repeats = args.chunk, args.repeats
    clock, unit = (time.process_time, "CPU ms") if args.threads == 1 else (time.perf_counter, "wall ms")
    engines = [("PyTorch", Engine(engine.model))]
    if isinstance(engine.backend, NativeBackend):
        engines.append(("native", engine))

    def best(rows: int, chunks: int) -> list[float]:
        return [cpu_best(lambda: one_pass(e, rows, chunks, chunk), repeats, clock) for _, e in engines]

    def cells(times: list[float], tokens: int) -> str:
        figures = " | ".join(f"{t * 1e3:.1f} ({tokens / t:.0f})" for t in times)
        return figures + (f" | {times[0] / times[1]:.2f}x" if len(times) == 2 else "")

    names = " | ".join(f"{name} {unit} (prompt tok/s)" for name, _ in engines)
    print(f"\n| pass ({layout}) | {names} |{' native vs PyTorch |' if len(engines) == 2 else ''}\n"
          f"|---|{'---|' * (len(engines) + (len(engines) == 2))}")
    for k in [1, *args.several]:
        print(f"| {k} chunk{'s' * (k > 1)} of {chunk} | {cells(best(0, k), k * chunk)} |")
    for rows in args.rows:
        print(f"| {rows} running rows | {cells(best(rows, 0), 0)} |")
        print(f"| {rows} running rows + 1 chunk of {chunk} | {cells(best(rows, 1), chunk)} |")


class Client(Request):
    """A request of a simulated client: notes the CPU time of its first token and submits the client's next one."""

    def __init__(self, prompt, max_tokens, clock, on_end):
        super().__init__(prompt, max_tokens)
        self.clock, self.on_end = clock, on_end
        self.submitted, self.first = clock(), None

    def accept(self, token: int) -> bool:
        if self.first is None:
            self.first = self.clock()
        return True

    def finish(self, reason: str, error: str | None = None) -> None:
        self.error = error
        self.on_end(self)


def workload(args, vocab: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) of each request: the lengths ``bench/serve.py`` draws (seed 0), random ids."""
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    jobs = []
    for _ in range(args.requests):
        words = max(1, int(rng.randint(*args.prompt_tokens) / 1.3))
        rng.choices(range(10), k=words)  # serve.py draws its words here: keep the same random stream
        tokens = max(1, round(words * 1.3))
        jobs.append(([1] + torch.randint(3, vocab, (tokens,), generator=g).tolist(), rng.randint(*args.max_tokens)))
    return jobs


class TimedBatcher(Batcher):
    """A batcher that notes the wall time of its passes with prompt chunks and of its plain decoding steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = {"prompts": 0.0, "decoding": 0.0}

    def _forward(self) -> None:
        kind = "prompts" if self.prefilling else "decoding"
        start = time.perf_counter()
        super()._forward()
        self.seconds[kind] += time.perf_counter() - start


def load(engine: Engine, batch: int, jobs: list, args) -> dict:
    """Run ``jobs`` through ``args.clients`` clients on a batcher of ``batch`` rows; CPU and wall figures."""
    batcher = TimedBatcher(engine, batch, max_length=args.seq_length, prefill_chunk=args.chunk)
    todo, ended = list(jobs), []

    def next_request(previous: Client | None = None) -> None:
        if previous is not None:
            ended.append(previous)
        if todo:
            prompt, max_tokens = todo.pop(0)
            batcher.submit(Client(prompt, max_tokens, time.process_time, next_request))

    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.clients):
        next_request()
    while batcher.step():
        pass
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    failed = [r.error for r in ended if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    tokens = sum(r.completion_tokens for r in ended)
    ttft = [r.first - r.submitted for r in ended]
    quantiles = statistics.quantiles(ttft, n=100, method="inclusive")
    m = batcher.metrics
    older = "?"  # a batcher older than the ragged pass counts neither
    return {"requests": len(ended), "tokens": tokens, "cpu": cpu, "wall": wall, "tps": tokens / cpu,
            "wall_tps": tokens / wall, "ttft50": quantiles[49], "ttft95": quantiles[94],
            "passes": getattr(m, "passes", older), "steps": m.steps, "mixed": getattr(m, "mixed_steps", older),
            "occupancy": m.rows_decoded / max(m.steps, 1), "prompt_s": batcher.seconds["prompts"],
            "decoding_s": batcher.seconds["decoding"]}


def loads(model, args) -> None:
    """The load table, batch sizes in turn on the same requests."""
    jobs = workload(args, model.vocab_size)
    print(f"\n{len(jobs)} requests, {sum(len(p) for p, _ in jobs)} prompt tokens, {sum(m for _, m in jobs)} to "
          f"generate, {args.clients} clients, --prefill_chunk {args.chunk}")
    print("| max_batch_size | layout | tokens | CPU s | tokens/CPU s | wall s | tokens/wall s | TTFT p50 CPU ms | "
          "TTFT p95 CPU ms | passes | decode steps | of which mixed | rows per step | wall s in passes with prompts | "
          "wall s in plain decoding steps |\n|" + "---|" * 15)
    figures = {}
    for batch in args.batch_sizes:
        engine, layout = engine_for(model, batch, args.threads)
        f = figures[batch] = load(engine, batch, jobs, args)
        print(f"| {batch} | {layout} | {f['tokens']} | {f['cpu']:.1f} | {f['tps']:.1f} | {f['wall']:.1f} | "
              f"{f['wall_tps']:.1f} | {f['ttft50'] * 1e3:.0f} | {f['ttft95'] * 1e3:.0f} | {f['passes']} | "
              f"{f['steps']} | {f['mixed']} | {f['occupancy']:.2f} | {f['prompt_s']:.1f} | {f['decoding_s']:.1f} |",
              flush=True)
    if len(figures) >= 2:
        (b0, first), (b1, other) = list(figures.items())[:2]
        print(f"\nbatch {b0} vs {b1}: tokens per CPU second {first['tps'] / other['tps']:.2f}x, per wall second "
              f"{first['wall_tps'] / other['wall_tps']:.2f}x; p95 TTFT (CPU) {other['ttft95'] / first['ttft95']:.2f}x "
              "lower")


def engine_for(model, batch: int, threads: int = 1) -> tuple[Engine, str]:
    """An engine over a copy of ``model`` prepared as the server prepares it for ``batch`` rows on ``threads``, and
    its layout and decoding."""
    import copy

    model = copy.deepcopy(model)
    layout = weight_layout("auto", batch, native=native_unavailable(model) is None)
    model = prepare_for_inference(model, layout=layout, batch_size=batch)
    engine = Engine(model, choose_backend(model, threads), eos_ids=[])
    return engine, f"{layout}, {engine.backend.description}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"), help="model preset (bench/generate.py)")
    parser.add_argument("--part", choices=("passes", "load", "both"), default="both")
    parser.add_argument("--chunk", type=int, default=64, help="--prefill_chunk")
    parser.add_argument("--several", type=int, nargs="+", default=[2, 4, 8], help="chunks in one pass")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 7], help="running rows folded into a pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (the fastest is reported)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--prompt_tokens", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--max_tokens", type=int, nargs=2, default=(16, 96), metavar=("MIN", "MAX"))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of PyTorch and of native passes (CPU seconds then count every thread's, spinning "
                             "included: compare wall seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(size_config(args.size)).eval()
    print(f"model {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), "
          f"{args.threads} thread{'s' * (args.threads > 1)}")
    if args.part in ("passes", "both"):
        for batch in dict.fromkeys(args.batch_sizes):
            passes(*engine_for(model, batch, args.threads), args)
    if args.part in ("load", "both"):
        loads(model, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
