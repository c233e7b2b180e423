"""``isolation.in_child``: a function's value and exceptions come back from its child process, and a child killed by a
signal (as llama.cpp's AMX kernels kill their process) is one clear failure while the rest of the run goes on."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from isolation import ChildCrashed, death, in_child

from tencentpretrain.hardware import cpu

TESTS = Path(__file__).resolve().parent


def crash() -> None:
    """Die as a native crash does: SIGSEGV, no Python exception, no answer."""
    os.kill(os.getpid(), signal.SIGSEGV)


def hang() -> None:
    signal.pause()


def divide(a: int, b: int) -> float:
    return a / b


def test_value_and_exception_come_back():
    assert in_child(divide, 6, b=3) == 2.0
    with pytest.raises(ZeroDivisionError) as caught:
        in_child(divide, 1, 0)
    assert any("raised in the child process" in note and "divide" in note for note in caught.value.__notes__)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_child_is_a_clear_failure():
    with pytest.raises(ChildCrashed) as caught:
        in_child(crash, about=("pytest",))
    message = str(caught.value)
    assert "test_isolation.crash" in message and "killed by SIGSEGV (signal 11)" in message
    assert "pytest " in message and "torch " in message  # the versions
    assert cpu().model in message and all(feature in message for feature in cpu().features())


def test_a_hung_child_is_killed():
    with pytest.raises(ChildCrashed, match="gave no answer within 2 s"):
        in_child(hang, timeout=2)


def test_death_in_words():
    assert death(-9) == "killed by SIGKILL (signal 9)"
    assert death(3) == "exited with status 3 without an answer"


def test_the_run_goes_on_after_a_crash(pytester):
    """A pytest run in which one test's child dies by SIGSEGV: that test fails, saying so, and the next one passes."""
    pytester.makepyfile(test_two=textwrap.dedent("""
        from isolation import in_child
        from test_isolation import crash, divide

        def test_crashes():
            in_child(crash, about=("pytest",))

        def test_after():
            assert in_child(divide, 1, 4) == 0.25
    """))
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    pytester._monkeypatch.setenv("PYTHONPATH", path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*ChildCrashed*test_isolation.crash*killed by SIGSEGV (signal 11)*"])
