"""Per-process figures (memory, CPU) as `status` shows them, from /proc via psutil."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil


def process_stats(pid: int, now: float | None = None) -> dict[str, Any]:
    """rss and uss in bytes, cpu in percent since the process started (as ps shows it)."""
    stats: dict[str, Any] = {"rss": None, "uss": None, "cpu": None}
    now = time.time() if now is None else now
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            created = proc.create_time()
            try:
                full = proc.memory_full_info()
                stats["rss"], stats["uss"] = int(full.rss), int(full.uss)
            except psutil.AccessDenied:
                stats["rss"] = int(proc.memory_info().rss)
        elapsed = max(now - created, 0.001)
        stats["cpu"] = round(100.0 * (times.user + times.system) / elapsed, 1)
    except psutil.Error:
        pass
    return stats


# USS is read from /proc/PID/smaps_rollup: about a millisecond a process, far
# more than the rest. One `status` reads it for as many workers as fit in this
# much time, those read longest ago first; the others show their last value.
USS_BUDGET = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class StatsReader:
    """`status` for thousands of workers without holding the master for seconds:
    RSS and CPU from /proc/PID/statm and /proc/PID/stat each time, USS within
    USS_BUDGET per request (a few seconds stale at worst with thousands)."""

    def __init__(self, budget: float = USS_BUDGET) -> None:
        self.budget = budget
        self.uss: dict[int, tuple[int | None, float]] = {}  # pid -> (uss, read at)
        self.boot = psutil.boot_time()

    def read(self, pids: list[int], now: float) -> dict[int, dict[str, Any]]:
        """{pid: {"rss", "uss", "cpu"}} (values None where unknown)."""
        self.uss = {pid: self.uss[pid] for pid in pids if pid in self.uss}  # drop the dead
        found = {pid: self._cheap(pid, now) for pid in pids}
        started = time.monotonic()
        for pid in sorted(pids, key=lambda p: self.uss.get(p, (None, 0.0))[1]):
            if time.monotonic() - started > self.budget:
                break
            self.uss[pid] = (_uss(pid), time.monotonic())
        for pid, stats in found.items():
            stats["uss"] = self.uss.get(pid, (None, 0.0))[0]
        return found

    def _cheap(self, pid: int, now: float) -> dict[str, Any]:
        stats: dict[str, Any] = {"rss": None, "uss": None, "cpu": None}
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                stats["rss"] = int(handle.read().split()[1]) * _PAGE
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return stats
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        elapsed = max(now - (self.boot + int(fields[19]) / _TICKS), 0.001)  # starttime
        stats["cpu"] = round(100.0 * cpu / elapsed, 1)
        return stats


def _uss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return None
