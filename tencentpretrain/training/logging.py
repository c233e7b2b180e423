"""What the user sees: notes, one progress line per report, a JSONL or CSV log, and TensorBoard scalars."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from tencentpretrain.errors import InputError
from tencentpretrain.jsonfile import read_text


def note(message: str) -> None:
    """A message for the user, printed once (by rank 0)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[pretrain] {message}", file=sys.stderr, flush=True)


def format_eta(seconds: float) -> str:
    """``1h02m03s`` style."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(record: dict) -> str:
    """One line: step, loss, perplexity, lr, grad norm, tokens/s, MFU, ETA (each target's loss and accuracy when
    there are several, skipped steps when any)."""
    norm = record["grad_norm"]  # None when every step since the last line was skipped
    line = (f"| step {record['step']:>7d}/{record['total_steps']} | loss {record['loss']:.4f} "
            f"| ppl {record['ppl']:9.2f} | lr {record['lr']:.3e} | grad norm {'-' if norm is None else f'{norm:.3f}'} "
            f"| {record['tokens_per_s']:,.0f} tok/s | MFU {100 * record['mfu']:.1f}% | ETA {record['eta']}")
    for key in record:
        if key.endswith("_acc"):
            name = key[:-len("_acc")]
            line += f" | {name} {record[f'{name}_loss']:.4f} acc {record[key]:.3f}"
    return line + (f" | skipped {record['skipped_steps']}" if record.get("skipped_steps") else "")


class TrainLogger:
    """Writes records on rank 0 only: to stdout, a ``.jsonl`` or ``.csv`` file, and TensorBoard when asked.

    Args:
        path: the log file; its suffix picks the format. Lines of steps after ``resume_step`` are dropped
            (they belong to the part of a killed run that is being redone).
        tensorboard_dir: where to write event files, or None.
        enabled: False on ranks other than 0.
        resume_step: the step training continues from (0 for a fresh run, which starts a new log).
    """

    def __init__(self, path: str | Path, tensorboard_dir: str | None, enabled: bool, resume_step: int = 0):
        self.enabled, self.path = enabled, Path(path)
        self.csv = self.path.suffix == ".csv"
        self.tensorboard = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(tensorboard_dir, purge_step=resume_step + 1 if resume_step else None)

    def _truncate(self, resume_step: int) -> None:
        if not resume_step or not self.path.exists():
            self.path.write_text("")
            return
        rows = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
        self.path.write_text("")
        for row in rows:
            self._write(row)

    def log(self, record: dict, echo: bool = True) -> None:
        """Append a record (a dict of scalars with a ``step``); print its progress line when ``echo``."""
        if not self.enabled:
            return
        self._write(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "total_steps"):
                    self.tensorboard.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["step"])
            self.tensorboard.flush()
        if echo:
            print(progress_line(record) if record.get("split", "train") == "train" else
                  f"| step {record['step']:>7d} | dev loss {record['loss']:.4f} | dev ppl {record['ppl']:.2f}",
                  flush=True)

    def _write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8", newline="") as f:
            if not self.csv:
                f.write(json.dumps(record) + "\n")
                return
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


CSV_FIELDS = ["split", "step", "loss", "ppl", "lr", "grad_norm", "tokens_per_s", "mfu", "skipped_steps", "time"]


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``.jsonl`` or ``.csv`` training log (numbers parsed back)."""
    path = Path(path)
    text = read_text(path, InputError, "a training log file")
    if path.suffix == ".csv":
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{line_no}: not a JSON log record ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{line_no}: not a JSON log record (a JSON object)")
        records.append(record)
    return records


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
