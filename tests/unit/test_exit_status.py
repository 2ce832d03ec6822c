"""describe_status (unicornish/protocol.py): a wait status as the log says it, with
the exit code or the signal number the crash backoff is given."""

from __future__ import annotations

import os
import signal

import pytest

from unicornish.protocol import describe_status, signal_name

CORE_DUMPED = 0x80


def exited(code: int) -> int:
    return code << 8


def killed(signum: int, core: bool = False) -> int:
    return signum | (CORE_DUMPED if core else 0)


def test_the_statuses_built_here_are_what_waitpid_gives():
    assert os.waitstatus_to_exitcode(exited(0)) == 0
    assert os.waitstatus_to_exitcode(exited(3)) == 3
    assert os.waitstatus_to_exitcode(killed(signal.SIGKILL)) == -signal.SIGKILL
    assert os.WCOREDUMP(killed(signal.SIGSEGV, core=True))


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exits(code):
    assert describe_status(exited(code)) == (f"exit {code}", code, None)


@pytest.mark.parametrize(
    ("signum", "core"),
    [
        (signal.SIGKILL, False),
        (signal.SIGTERM, False),
        (signal.SIGQUIT, True),
        (signal.SIGSEGV, True),
        (signal.SIGABRT, False),
    ],
)
def test_signals(signum, core):
    name = signal.Signals(signum).name
    assert describe_status(killed(signum, core)) == (f"killed by {name}", None, int(signum))


def test_a_signal_without_a_name():
    unnamed = 100
    with pytest.raises(ValueError):
        signal.Signals(unnamed)
    assert describe_status(killed(unnamed)) == ("killed by signal 100", None, 100)
    assert signal_name(unnamed) == "signal 100"


def test_signal_name():
    assert signal_name(signal.SIGHUP) == "SIGHUP"
    assert signal_name(int(signal.SIGTTIN)) == "SIGTTIN"
