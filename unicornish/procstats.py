"""Per-process figures (memory, CPU) as `status` shows them, from /proc via psutil."""

from __future__ import annotations

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
