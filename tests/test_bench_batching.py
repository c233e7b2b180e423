"""bench/batching.py runs on the tiny size: every request makes exactly its max_tokens (no eos), one at a time
decodes one row per step, and the pass tables are printed (no timing is checked)."""

from __future__ import annotations

from pathlib import Path

from bench_support import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_batching_runs_the_load_and_the_passes(capsys):
    module = load_bench("batching")
    args = ["--size", "tiny", "--requests", "6", "--clients", "3", "--prompt_tokens", "4", "90", "--max_tokens", "2",
            "12", "--chunk", "16", "--several", "2", "--rows", "3", "--repeats", "1", "--batch_sizes", "3", "1"]
    assert module.main(args) == 0
    out = capsys.readouterr().out
    jobs = module.workload(module.argparse.Namespace(requests=6, prompt_tokens=(4, 90), max_tokens=(2, 12)), 32000)
    wanted = sum(m for _, m in jobs)
    cells = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    loads = [row for row in cells if len(row) == 15][1:]  # the load table (the pass tables have 4 columns)
    assert [(row[0].strip(), int(row[2])) for row in loads] == [("3", wanted), ("1", wanted)]
    assert int(loads[1][10]) == wanted - len(jobs) and float(loads[1][12]) == 1.0  # one row: a step per token
    assert int(loads[0][11]) > 0  # with 3 rows, some decoding steps also read prompt chunks
    assert out.count("| 2 chunks of 16 |") == 2 and out.count("batch 3 vs 1: tokens per CPU second") == 1
