"""The few Linux process controls the standard library lacks (prctl)."""

from __future__ import annotations

import ctypes
import ctypes.util

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return int(_libc.prctl(option, arg, 0, 0, 0)) == 0


def load() -> None:
    """Load libc in the master, so a forked worker does not pay for it."""
    _prctl(0, 0)


def set_parent_death_signal(signum: int) -> bool:
    return _prctl(PR_SET_PDEATHSIG, signum)


def set_child_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)
