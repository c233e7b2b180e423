"""How every command line ends on bad input: one message naming the flag, file and fault, no traceback.

A command's ``main(argv)`` raises :class:`InputError` (or one of the documented error classes that derive from it)
for a bad file or flag; :func:`run_cli` turns that into ``<prog>: error: <message>`` on stderr and exit status 1.
Set ``TP_DEBUG=1`` (or pass ``--debug`` to any command) to see the traceback for a bug report.

    def main(argv=None) -> int:
        ...
        with naming("--spm_model_path", args.spm_model_path):
            tokenizer = SentencePieceTokenizer(args.spm_model_path)  # its errors now start with the flag

    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tencentpretrain.errors import InputError

DEBUG_FLAG = "--debug"


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Whether tracebacks are wanted: ``TP_DEBUG`` set to a non-empty value other than 0, or ``--debug``."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("TP_DEBUG", "") not in ("", "0") or DEBUG_FLAG in argv


@contextmanager
def naming(flag: str, path: str | Path | None) -> Iterator[None]:
    """Start the message of an :class:`InputError` raised inside with ``flag`` when it is about ``path``.

    Library code names the file it could not read; the command line knows which flag gave it. Messages that do
    not mention ``path`` (another file's fault) or already name the flag are left alone.
    """
    try:
        yield
    except InputError as err:
        message = str(err.args[0]) if err.args else ""
        if path is not None and str(path) in message and not message.startswith(flag):
            err.args = (f"{flag} {message}", *err.args[1:])
        raise


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main(argv)``; bad input becomes a one-line message and exit status 1.

    ``main`` raises :class:`InputError` for a bad file or flag. An ``OSError`` that names a file (permission
    denied, disk full, a directory where a file was expected) is reported the same way, and Ctrl-C ends with
    status 130; ``--debug`` (taken out of ``argv`` before ``main`` sees it) or ``TP_DEBUG=1`` add the traceback.

    Args:
        main: the command's main function; an int it returns is the exit status, anything else (None, a report
            that tests read) means 0.
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the name in the message (default: the script's file name).

    Returns:
        The exit status for ``sys.exit``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    prog = prog or Path(sys.argv[0]).name
    try:
        status = main(argv)
    except InputError as err:
        return _fail(prog, str(err), debug)
    except OSError as err:
        if err.filename is None:
            raise
        return _fail(prog, f"{err.filename}: {err.strerror or err}", debug)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _fail(prog: str, message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 1
