"""Run a function in a child process, so that a native crash in a library it calls costs one failing test.

llama.cpp (through llama-cpp-python) is C++ we do not control: on some CPUs some of its paths crash the process
(SIGSEGV in its AMX kernels, SIGILL in a wheel built for another CPU). Called in the pytest process, such a crash ends
the whole run. Tests call it through :func:`in_child` instead::

    logits = in_child(llama_cpp_side.logits, gguf_path, ids, about=("llama-cpp-python",))

The function runs in a fresh interpreter (``spawn``: nothing of ours, no OpenMP or thread state, is inherited) and its
return value or exception comes back; if the child dies, :class:`ChildCrashed` says of what signal, in which
function, with the libraries' versions and the CPU's features, and the run goes on. Functions and arguments must be
picklable: module-level functions of an importable module (the tests folder is on ``sys.path``), plain data back.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from importlib import metadata

from tencentpretrain.hardware import cpu

TIMEOUT_S = 900


class ChildCrashed(AssertionError):
    """The child process died (a signal or an exit without an answer) or did not answer in time."""


def _child(connection, function, args, kwargs) -> None:
    try:
        result = ("value", function(*args, **kwargs))
    except BaseException as error:  # noqa: BLE001  (any failure goes back to the parent, to be raised there)
        result = ("error", (error, traceback.format_exc()))
    try:
        connection.send(result)
    except Exception as error:  # noqa: BLE001  (an unpicklable result or exception)
        connection.send(("error", (RuntimeError(f"the child's answer cannot be sent back: {error!r}"),
                                   traceback.format_exc())))
    connection.close()


def versions(distributions: tuple[str, ...]) -> str:
    """``"llama-cpp-python 0.3.36, gguf 0.19.0"`` for the installed ``distributions`` (absent ones say so)."""
    found = []
    for name in distributions:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def death(exitcode: int | None) -> str:
    """How a child ended, in words: ``"killed by SIGSEGV (signal 11)"``, ``"exited with status 3"``..."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-exitcode})"
    return f"exited with status {exitcode} without an answer"


def in_child(function, *args, about: tuple[str, ...] = (), timeout: float = TIMEOUT_S, **kwargs):
    """``function(*args, **kwargs)`` computed in a child process.

    Args:
        function: a module-level function (pickled by name).
        about: distributions whose versions a crash report names (e.g. ``("llama-cpp-python",)``).
        timeout: seconds to wait for the answer before the child is killed.

    Returns:
        What the function returned.

    Raises:
        The function's own exception, re-raised here (its traceback in the child is attached as a note).
        ChildCrashed: the child died or hung.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args, kwargs), daemon=True)
    process.start()
    sender.close()
    answer, timed_out = None, False
    try:
        if receiver.poll(timeout):
            answer = receiver.recv()
        else:
            timed_out = True
    except EOFError:  # the child died before answering
        pass
    finally:
        receiver.close()
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    if answer is None:
        how = f"gave no answer within {timeout:g} s" if timed_out else death(process.exitcode)
        machine = cpu()
        raise ChildCrashed(f"{function.__module__}.{function.__qualname__} {how} in its child process; "
                           f"{versions(('torch', *about))}; CPU {machine.model}, features "
                           f"{' '.join(machine.features()) or 'none known'}")
    kind, value = answer
    if kind == "error":
        error, text = value
        error.add_note(f"(raised in the child process)\n{text}")
        raise error
    return value
