"""The few Linux process controls the standard library lacks (prctl), and a
liveness check that sees through zombies."""

from __future__ import annotations

import ctypes
import os

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if _libc is None:
        # The interpreter's own symbols include libc's: no ctypes.util.find_library,
        # which runs `ldconfig -p` in a child and imports shutil and subprocess.
        _libc = ctypes.CDLL(None, use_errno=True)
    return int(_libc.prctl(option, arg, 0, 0, 0)) == 0


def load() -> None:
    """Load libc in the master, so a forked worker does not pay for it."""
    _prctl(0, 0)


def set_parent_death_signal(signum: int) -> bool:
    return _prctl(PR_SET_PDEATHSIG, signum)


def set_child_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def shared_memory(name: str, size: int) -> int:
    """A memfd of `size` zero bytes: shared pages that can be handed to a process
    the master does not fork itself, over a unix socket."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


def process_is_gone(pid: int, create_time: float) -> bool:
    """True unless `pid` is still the process created at `create_time` and running.

    A dead process whose parent has not reaped it yet keeps its pid and create
    time as a zombie: by those alone it would look alive for as long as that
    parent likes. A different create time means the pid was reused.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.create_time() != create_time:
                return True
            return proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return True  # no such process (or not ours to see: it cannot be our parent)
