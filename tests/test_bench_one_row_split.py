"""bench/one_row_split.py runs, and its sliced product equals F.linear (the script asserts it)."""

import importlib.util

from train_support import ROOT


def test_one_row_split_bench_runs(capsys):
    spec = importlib.util.spec_from_file_location("one_row_split", ROOT / "bench" / "one_row_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rows", "256", "--cols", "64", "--parts", "2"])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and rows[1].startswith("| 1 |") and rows[2].startswith("| 2 |")
