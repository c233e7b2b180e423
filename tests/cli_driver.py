"""Run many command lines in one Python process, each as ``python script.py ARGS`` would, and record what it shows.

    python tests/cli_driver.py cases.json results.json

``cases.json`` is a list of ``{"id", "script", "argv"}``; each script is run with ``runpy`` as ``__main__`` (so its
real ``if __name__ == "__main__"`` line runs) with file descriptors 1 and 2 sent to a file, so output from C code
and child processes is caught too. An exception that escapes the script is printed the way the interpreter prints
it ("Traceback (most recent call last): ...") and gives status 1, as it would in its own process. Torch is imported
once for all cases, which is why the bad-input table (tests/test_bad_input.py) runs through this driver.

``results.json`` maps each id to ``{"status", "output"}``. A case that runs longer than ``TIMEOUT_S`` is stopped
and recorded with status ``"timeout"``.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import traceback

TIMEOUT_S = 120


class CaseTimeout(Exception):
    """A case ran longer than TIMEOUT_S (e.g. a server that accepted a broken file and started serving)."""


def _alarm(signum, frame):
    raise CaseTimeout(f"still running after {TIMEOUT_S} s")


def run_case(script: str, argv: list[str]) -> tuple[int | str, str]:
    """Run one script with fds 1/2 captured; returns (exit status or "timeout", everything it printed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        sys.argv = [script, *argv]
        signal.alarm(TIMEOUT_S)
        try:
            runpy.run_path(script, run_name="__main__")
            status: int | str = 0
        except SystemExit as done:
            code = done.code
            status = 0 if code is None else code if isinstance(code, int) else 1
            if not isinstance(code, (int, type(None))):
                print(code, file=sys.stderr)  # sys.exit("message") prints the message
        except CaseTimeout:
            status = "timeout"
        except BaseException:  # what the interpreter would print for an uncaught exception
            traceback.print_exc()
            status = 1
        finally:
            signal.alarm(0)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        capture.seek(0)
        return status, capture.read().decode("utf-8", errors="replace")


def main() -> None:
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    for case in cases:
        status, output = run_case(case["script"], case["argv"])
        results[case["id"]] = {"status": status, "output": output}
    with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
