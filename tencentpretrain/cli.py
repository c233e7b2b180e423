"""How every command line ends on bad input: one message naming the flag, file and fault, no traceback.

A command's ``main(argv)`` raises :class:`InputError` (or one of the documented error classes that derive from it)
for a bad file or flag; :func:`run_cli` turns that into ``<prog>: error: <message>`` on stderr and exit status 1.
Set ``TP_DEBUG=1`` (or pass ``--debug`` to a command that offers it) to see the traceback for a bug report.

    def main(argv=None) -> int:
        ...
        raise InputError(f"--spm_model_path {path}: not a SentencePiece model")

    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path


class InputError(ValueError):
    """A bad input file or flag; the message names the flag, the file and what is wrong with it."""


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Whether tracebacks are wanted: ``TP_DEBUG`` set to a non-empty value other than 0, or ``--debug``."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("TP_DEBUG", "") not in ("", "0") or "--debug" in argv


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main(argv)``; an :class:`InputError` becomes a one-line message and exit status 1.

    Args:
        main: the command's main function; returns an exit status (None means 0).
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the name in the message (default: the script's file name).
    """
    prog = prog or Path(sys.argv[0]).name
    try:
        status = main(argv)
    except InputError as err:
        if debug_enabled(argv):
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0 if status is None else int(status)
