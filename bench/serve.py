"""Serving under load: the continuous-batching server against the same server one request at a time, in one run.

A random model of a given size (``--size``, the presets of ``bench/generate.py``) is saved to a temporary checkpoint
and served by ``inference/server.py`` in a subprocess on 127.0.0.1, once per ``--max_batch_size`` (default 8, then
1). ``--clients`` streaming clients (httpx, one thread each) send ``--requests`` chat-free completions in all,
each client its next request as soon as its previous one ends; prompts of ``--prompt_tokens`` (a range) tokens and
``max_tokens`` in ``--max_tokens`` (a range), the same list for every server, greedy (or sampled: ``--temperature``).
Reported per server:

- tokens/s: generated tokens (the usage the server reports) over the wall time of the whole run;
- TTFT: time from sending a request to its first text chunk, p50 and p95 over requests;
- ITL: inter-token latency, the gaps between a request's successive text chunks, p50 and p95 over all gaps;
- errors: requests that failed or got a status other than 200 (each distinct message is printed to stderr).

``--soak SECONDS`` instead runs the batching server for that long (bounded) under a mix of normal requests,
clients that disconnect mid-stream and malformed bodies, and reports the server's RSS after warm-up and at the end,
the requests served and the errors (any unexpected status or failed request), and whether /health still answers.

Run: ``python -m bench.serve`` (99M model), ``python -m bench.serve --size tiny --requests 16`` (a quick look),
``python -m bench.serve --soak 180``. The tokenizer is the LLaMA one from ``../shared`` (or ``TP_SHARED_DIR``) when
present, else ``--spm_model_path``, else a small one trained here (the model's vocabulary then shrinks to it).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tencentpretrain.checkpoint import save_state_dict
from tencentpretrain.model import build_model

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("the model reads tokens and learns to predict the next one from data while many users ask questions "
         "about history science music cities rivers mountains language training servers and batches").split()


def find_tokenizer(given: str | None, workdir: Path) -> Path:
    """``given``, else the shared LLaMA tokenizer, else a small one trained on generated text."""
    if given:
        return Path(given)
    shared = Path(os.environ.get("TP_SHARED_DIR", ROOT.parent / "shared"))
    llama = shared / "data" / "tokenizers" / "llama_tokenizer.model"
    if llama.is_file():
        return llama
    from tencentpretrain.tokenizers.train import train_sentencepiece

    rng = random.Random(0)
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(WORDS, k=20)) for _ in range(2000)) + "\n", encoding="utf-8")
    print(f"(no LLaMA tokenizer in {shared}: using a small one trained here)", flush=True)
    return train_sentencepiece(corpus, workdir / "bench_spm", vocab_size=600)


def save_model(size: str, vocab_size: int, workdir: Path) -> tuple[Path, Path, float]:
    """A random model of the preset ``size`` saved as (config, checkpoint); its parameters in millions."""
    from bench.generate import size_config

    config = size_config(size).replace(vocab_size=vocab_size)
    torch.manual_seed(0)
    model = build_model(config).eval()
    config.save(workdir / "config.json")
    save_state_dict(model.state_dict(), workdir / "model.bin")
    return workdir / "config.json", workdir / "model.bin", sum(p.numel() for p in model.parameters()) / 1e6


class Server:
    """``inference/server.py`` in a subprocess on a free loopback port."""

    def __init__(self, model: tuple[Path, Path], spm: Path, batch: int, args):
        command = [sys.executable, str(ROOT / "inference" / "server.py"), "--load_model_path", str(model[1]),
                   "--config_path", str(model[0]), "--spm_model_path", str(spm), "--host", "127.0.0.1",
                   "--port", "0", "--max_batch_size", str(batch), "--temperature", str(args.temperature),
                   "--seq_length", str(args.seq_length), "--prefill_chunk", str(args.prefill_chunk),
                   "--max_new_tokens", str(args.max_tokens[1])]
        if args.threads:
            command += ["--threads", str(args.threads)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("serving "):
            self.process.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.url = line.split()[3]

    def rss_mb(self) -> float:
        """The server process's resident memory, MiB (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def workload(count: int, prompt_tokens: tuple[int, int], max_tokens: tuple[int, int], seed: int = 0):
    """``count`` (prompt text, max_tokens) pairs; a word is about 1.3 LLaMA tokens."""
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS, k=max(1, int(rng.randint(*prompt_tokens) / 1.3)))),
             rng.randint(*max_tokens)) for _ in range(count)]


def stream_one(client, prompt: str, max_tokens: int, stop_after: int | None = None) -> dict:
    """Send one streaming completion; the time to its first text, its chunk gaps, its token count."""
    import json

    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    stamps, tokens, chunks = [], 0, 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"status {response.status_code}"}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return {"error": data["error"]["message"]}
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            elif data["choices"] and data["choices"][0]["text"]:
                stamps.append(time.perf_counter())
                chunks += 1
                if stop_after is not None and chunks >= stop_after:
                    return {"disconnected": True}
    ttft = stamps[0] - start if stamps else float("nan")
    return {"ttft": ttft, "gaps": [b - a for a, b in zip(stamps, stamps[1:])], "tokens": tokens}


def run_load(url: str, jobs: list, clients: int) -> dict:
    """All ``jobs`` through ``clients`` concurrent clients; the aggregate figures."""
    import httpx

    todo = list(enumerate(jobs))
    lock = threading.Lock()
    results = []

    def client_loop():
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    _, (prompt, max_tokens) = todo.pop(0)
                try:
                    result = stream_one(client, prompt, max_tokens)
                except Exception as err:  # noqa: BLE001 (counted as an error)
                    result = {"error": f"{type(err).__name__}: {err}"}
                with lock:
                    results.append(result)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]
    ttfts = [r["ttft"] for r in good]
    gaps = [g for r in good for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in good)
    return {"requests": len(results), "tokens": tokens, "wall": wall, "tps": tokens / wall,
            "ttft50": percentile(ttfts, 50), "ttft95": percentile(ttfts, 95), "itl50": percentile(gaps, 50),
            "itl95": percentile(gaps, 95), "errors": len(results) - len(good),
            "messages": sorted({r["error"] for r in results if "error" in r})}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def compare(args, model, spm) -> None:
    jobs = workload(args.requests, args.prompt_tokens, args.max_tokens)
    header = ("| server | clients | requests | tokens | wall s | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | "
              "ITL p95 ms | errors |")
    print(header + "\n|" + "---|" * (header.count("|") - 1), flush=True)
    figures = {}
    for batch in args.batch_sizes:
        server = Server(model, spm, batch, args)
        try:
            run_load(server.url, workload(args.clients, (8, 16), (2, 4), seed=1), args.clients)  # warm-up
            f = figures[batch] = run_load(server.url, jobs, args.clients)
        finally:
            server.stop()
        print(f"| --max_batch_size {batch} | {args.clients} | {f['requests']} | {f['tokens']} | {f['wall']:.1f} | "
              f"{f['tps']:.1f} | {f['ttft50'] * 1e3:.0f} | {f['ttft95'] * 1e3:.0f} | {f['itl50'] * 1e3:.1f} | "
              f"{f['itl95'] * 1e3:.1f} | {f['errors']} |", flush=True)
        for message in f["messages"]:
            print(f"  error (--max_batch_size {batch}): {message}", file=sys.stderr, flush=True)
    if len(figures) >= 2:
        (b0, first), (b1, other) = list(figures.items())[:2]
        print(f"\n--max_batch_size {b0} vs {b1}: tokens/s {first['tps'] / other['tps']:.2f}x, "
              f"p95 TTFT {other['ttft95'] / first['ttft95']:.2f}x lower, "
              f"p50 TTFT {other['ttft50'] / first['ttft50']:.2f}x lower", flush=True)


def soak(args, model, spm) -> int:
    """Bounded soak: normal, disconnecting and malformed requests for ``args.soak`` seconds."""
    import httpx

    server = Server(model, spm, args.batch_sizes[0], args)
    jobs = workload(64, args.prompt_tokens, args.max_tokens, seed=2)
    counts = {"served": 0, "disconnected": 0, "refused": 0, "errors": 0}
    lock = threading.Lock()
    try:
        run_load(server.url, jobs[:args.clients], args.clients)  # warm-up with requests of the soak's sizes
        rss = [server.rss_mb()]
        start = time.time()
        deadline = start + args.soak

        def client_loop(index: int):
            rng = random.Random(index)
            with httpx.Client(base_url=server.url, timeout=600) as client:
                while time.time() < deadline:
                    kind = rng.random()
                    try:
                        if kind < 0.15:
                            status = client.post("/v1/completions", content=b'{"prompt": 5').status_code
                            outcome = "refused" if status == 400 else "errors"
                        else:
                            prompt, max_tokens = rng.choice(jobs)
                            result = stream_one(client, prompt, max_tokens, stop_after=2 if kind < 0.3 else None)
                            outcome = ("errors" if "error" in result else
                                       "disconnected" if result.get("disconnected") else "served")
                    except Exception:  # noqa: BLE001 (counted)
                        outcome = "errors"
                    with lock:
                        counts[outcome] += 1

        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(client_loop, i) for i in range(args.clients)]
            for quarter in range(1, 4):  # RSS along the way: growth that levels off is warm-up, not a leak
                time.sleep(max(0.0, start + args.soak * quarter / 4 - time.time()))
                rss.append(server.rss_mb())
            for future in futures:
                future.result()
        time.sleep(1)
        rss.append(server.rss_mb())
        health = httpx.get(f"{server.url}/health", timeout=30).json()
    finally:
        server.stop()
    print(f"soak {args.soak:.0f} s, --max_batch_size {args.batch_sizes[0]}, {args.clients} clients: "
          f"{counts['served']} served, {counts['disconnected']} disconnected mid-stream, {counts['refused']} "
          f"malformed refused, errors = {counts['errors']}; RSS after warm-up, at 1/4, 1/2, 3/4 and the end: "
          f"{', '.join(f'{r:.0f}' for r in rss)} MiB ({rss[-1] - rss[0]:+.0f}); health: {health['status']}, "
          f"{health['running']} running", flush=True)
    return 1 if counts["errors"] or health["status"] != "ok" else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=("tiny", "100m"), help="model preset (bench/generate.py)")
    parser.add_argument("--spm_model_path", help="tokenizer (default: the shared LLaMA one, else a small one)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    parser.add_argument("--requests", type=int, default=32, help="requests in all, per server")
    parser.add_argument("--prompt_tokens", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--max_tokens", type=int, nargs=2, default=(16, 96), metavar=("MIN", "MAX"))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 1], help="servers' --max_batch_size")
    parser.add_argument("--threads", type=int, default=None, help="servers' --threads (default: theirs)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="servers' --temperature (0: greedy; above, they sample with their default top-k 40 and "
                             "top-p 0.9)")
    parser.add_argument("--prefill_chunk", type=int, default=64, help="servers' --prefill_chunk")
    parser.add_argument("--seq_length", type=int, default=512, help="servers' --seq_length")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                        help="soak the first batch size for this long instead (at most 3600)")
    args = parser.parse_args(argv)
    if args.soak is not None and not 0 < args.soak <= 3600:
        parser.error("--soak must be in (0, 3600] seconds")
    if not args.temperature >= 0:
        parser.error(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        spm = find_tokenizer(args.spm_model_path, workdir)
        from tencentpretrain.tokenizers import SentencePieceTokenizer

        vocab = SentencePieceTokenizer(spm).vocab_size
        *model, params = save_model(args.size, vocab, workdir)
        print(f"model {args.size} ({params:.0f}M parameters, vocabulary {vocab}), tokenizer {spm.name}", flush=True)
        if args.soak is not None:
            return soak(args, tuple(model), spm)
        compare(args, tuple(model), spm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
