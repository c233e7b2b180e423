"""Draw the loss and perplexity curves of a training log (``<output_model_path>-log.jsonl`` or ``.csv``) to a PNG.

    python scripts/plot_loss.py --log_path models/llama_zh_7b-log.jsonl --output_path loss.png

Training records are drawn as lines, dev records (``--dev_dataset_path``) as markers; several logs can be compared
by passing several ``--log_path`` values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tencentpretrain.cli import naming, run_cli
from tencentpretrain.errors import InputError
from tencentpretrain.training.logging import read_log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log_path", nargs="+", required=True, help="Training log(s) written by pretrain.py.")
    parser.add_argument("--output_path", required=True, help="PNG file to write.")
    parser.add_argument("--title", default=None, help="Figure title (default: the log file names).")
    return parser.parse_args(argv)


def curves(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """split -> (steps, losses) of one log."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in read_log(path):
        step, loss = record.get("step"), record.get("loss")
        if not isinstance(step, int) or isinstance(step, bool) or not isinstance(loss, (int, float)):
            raise InputError(f"{path}: record {str(record)[:100]} has no integer \"step\" and numeric \"loss\"")
        steps, values = out.setdefault(str(record.get("split", "train")), ([], []))
        steps.append(step)
        values.append(float(loss))
    return out


def plot(logs: list[Path], output: Path, title: str | None = None) -> None:
    """Two panels, loss and perplexity against the optimizer step, one line per log and split."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

    fig, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for path in logs:
        for split, (steps, values) in curves(path).items():
            style = {"marker": "o", "linestyle": "--"} if split == "dev" else {}
            label = f"{path.stem} {split}"
            loss_ax.plot(steps, values, label=label, **style)
            ppl_ax.plot(steps, [math.exp(min(v, 50.0)) for v in values], label=label, **style)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    ppl_ax.set(xlabel="step", ylabel="perplexity", title="perplexity", yscale="log")
    for ax in (loss_ax, ppl_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or ", ".join(p.name for p in logs))
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(output)


def main(argv: list[str] | None = None) -> int:
    """Returns 0; a missing, empty or malformed log raises an InputError (run_cli: status 1)."""
    args = parse_args(argv)
    logs = [Path(p) for p in args.log_path]
    for path in logs:
        with naming("--log_path", path):
            if not path.exists():
                raise InputError(f"{path} not found")
            if not any(curves(path).values()):
                raise InputError(f"{path} has no records")
    plot(logs, Path(args.output_path), args.title)
    print(f"wrote {args.output_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
