"""What the master, its workers and its clients agree on; imports nothing of ours.

The exit codes a worker uses to say why it stopped, the reports it writes to
the master, the slot number a spare is given, the signals the master handles,
the hook names and the bound on the worker count all live here, once, so that
no module has to import the master (or a sibling) to learn them. (The control
socket's commands are declared in ctl/commands.py.)
"""

from __future__ import annotations

import os
import signal
import struct

# -- worker exit codes --------------------------------------------------------

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_BOOT_FAILED = 3
# How an unasked-for exit 0 counts for the crash-loop backoff (any non-zero code).
EXIT_UNASKED = 255
# What Worker.run returns when the worker was promoted to mold: never an exit
# code, the process goes on serving forks (mold.py).
BECAME_MOLD = -1

# The task duration histogram's bucket bounds (seconds, `le`, inclusive; +Inf
# implied), fixed: a worker records into its scoreboard page, the master sums.
# 1-2.5-5 steps from 5 us (an empty task takes ~1 us) to a minute, so a 10 us
# task and a 5 s one each land in a bucket of their own size.
TASK_DURATION_BUCKETS: tuple[float, ...] = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Sent by the master before a timeout SIGKILL: faulthandler dumps the stack.
TRACEBACK_SIGNAL = signal.SIGUSR2

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCHLD,
    signal.SIGCONT,
)

HOOK_NAMES = ("before_fork", "after_fork", "worker_exit", "before_exec", "after_mold")

# The master asks a worker to become the mold (--refork-after, `ctl refork`).
# Ignored by default, so a process that has no handler for it yet is not hurt.
PROMOTE_SIGNAL = signal.SIGURG

# The most workers one master keeps. Each costs a process and a shared page;
# far beyond this the pid and memory limits of one host are reached first, and
# a typo (99999999999) must be refused instead of being planned for.
MAX_WORKERS = 10_000

# USR2: the fd of the --metrics socket, handed by the old master to the new one
# (which accepts on it from then on: the port is never closed, never busy).
METRICS_FD_ENV = "UNICORNISH_METRICS_FD"

# -- reports: worker -> master, through one pipe ------------------------------

_REPORT = struct.Struct("=ii")
REPORT_SIZE = _REPORT.size
REPORT_READY = 1
# A worker completed the task count of --refork-after: it may become the mold.
REPORT_WARM = 2

# What the master writes to a spare's pipe: the slot number it takes.
_SLOT = struct.Struct("=i")
SLOT_SIZE = _SLOT.size


def encode_report(pid: int, event: int) -> bytes:
    return _REPORT.pack(pid, event)


def decode_reports(data: bytes) -> list[tuple[int, int]]:
    """Whole reports only: a torn tail (never written by us) is dropped."""
    usable = len(data) - len(data) % REPORT_SIZE
    return [_REPORT.unpack_from(data, i) for i in range(0, usable, REPORT_SIZE)]


def encode_slot(nr: int) -> bytes:
    return _SLOT.pack(nr)


def decode_slot(data: bytes) -> int | None:
    return _SLOT.unpack(data)[0] if len(data) == SLOT_SIZE else None


# -- how a child ended ----------------------------------------------------------


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_status(status: int) -> tuple[str, int | None, int | None]:
    """`exit 0` / `killed by SIGKILL`, with the exit code or the signal number."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"killed by {signal_name(signum)}", None, signum
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return f"exit {code}", code, None
