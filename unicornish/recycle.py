"""Checks the master makes on its workers from time to time, from its own loop.

* `--max-memory MB`: every MEMORY_CHECK_INTERVAL seconds, each worker's USS
  (the memory only it uses: copy-on-write pages shared with the master are
  not counted, as they are in RSS) is compared with the limit; a worker over
  it is recycled gracefully (QUIT: it finishes its task, a new one takes its
  slot at once). RSS is read first (cheap: /proc/PID/statm) and USS (which
  reads /proc/PID/smaps_rollup) only when RSS is over the limit, since USS is
  never larger than RSS.
* `--give-up-after SECONDS`: when workers are wanted but none has stayed up
  for that long, the master stops and exits 1, so that systemd or Kubernetes
  can take over (a restart, an alert) instead of a crash loop going on forever.

(`--max-tasks` is counted by the worker itself: see worker.Worker._loop.)
Each check is called on every turn of the master's loop and does its work
only when due; its `next_deadline` is in `Master.timers`, so that the loop
wakes up for it.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import psutil

from unicornish.backoff import STABLE_AFTER

if TYPE_CHECKING:
    from unicornish.master import Master, WorkerProc

MEMORY_CHECK_INTERVAL = 3.0
MIB = 1024 * 1024


class MemoryLimit:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.next_check: float | None = None

    def next_deadline(self, now: float) -> float | None:
        if not self.master.settings.max_memory or self.master.stopping:
            return None
        if self.next_check is None:
            self.next_check = now + MEMORY_CHECK_INTERVAL
        return self.next_check

    def check(self, now: float) -> None:
        limit = self.master.settings.max_memory
        if not limit:
            self.next_check = None
            return
        if self.next_check is None:
            self.next_check = now + MEMORY_CHECK_INTERVAL
            return
        if now < self.next_check:
            return
        self.next_check = now + MEMORY_CHECK_INTERVAL
        limit_bytes = int(limit * MIB)
        for w in self.master.live_workers():
            uss = _uss_over(w.pid, limit_bytes)
            if uss is not None:
                self.recycle(w, uss, limit, now)

    def recycle(self, w: WorkerProc, uss: int, limit: float, now: float) -> None:
        self.master.log.warning(
            "%s pid=%d uses %.1f MiB USS, over --max-memory %g MiB: recycling it gracefully",
            w.label,
            w.pid,
            uss / MIB,
            limit,
        )
        w.extra["recycled"] = "max-memory"
        self.master.stop_worker(w, signal.SIGQUIT, now, self.master.settings.graceful_timeout)


def _uss_over(pid: int, limit_bytes: int) -> int | None:
    """The process's USS if it is over the limit, else None (also when it is gone)."""
    try:
        proc = psutil.Process(pid)
        if proc.memory_info().rss <= limit_bytes:
            return None
        uss = int(proc.memory_full_info().uss)
    except psutil.Error:
        return None
    return uss if uss > limit_bytes else None


class GiveUp:
    """Exit 1 when no worker has stayed up for --give-up-after seconds while some are wanted.

    A worker has "stayed up" once it has been ready for min(SECONDS, 2 s), the
    time after which the crash-loop backoff also trusts it. The clock runs
    only while workers are wanted and none has stayed up; while a worker is
    ready but not yet proven, the decision waits for it to prove itself or die.
    """

    def __init__(self, master: Master) -> None:
        self.master = master
        self.last_ok = time.monotonic()
        self.idle = True

    def _limit(self) -> float | None:
        if self.master.stopping:
            return None
        return self.master.settings.give_up_after

    def stable_after(self, limit: float) -> float:
        return min(limit, STABLE_AFTER)

    def next_deadline(self, now: float) -> float | None:
        limit = self._limit()
        if not limit or self.master.wanted == 0:
            return None
        stable = self.stable_after(limit)
        pending = [
            w.ready_at + stable
            for w in self.master.live_workers()
            if w.ready_at is not None and w.ready_at + stable > now
        ]
        if pending:
            return min(pending)
        when = max(self.last_ok, self.master.grace_from) + limit
        return when if when > now else None

    def on_reaped(self, w: WorkerProc, now: float) -> None:
        """A worker that had stayed up kept things healthy until now."""
        limit = self.master.settings.give_up_after
        if limit and w.ready_at is not None and now - w.ready_at >= self.stable_after(limit):
            self.last_ok = max(self.last_ok, now)

    def check(self, now: float) -> None:
        limit = self._limit()
        master = self.master
        if not limit or master.wanted == 0 or self.idle:
            self.last_ok = now
            self.idle = not limit or master.wanted == 0
            return
        stable = self.stable_after(limit)
        up = [w for w in master.live_workers() if w.ready_at is not None]
        if any(now - w.ready_at >= stable for w in up if w.ready_at is not None):
            self.last_ok = now
            return
        if now - max(self.last_ok, master.grace_from) < limit or up:
            return
        master.log.error(
            "no worker stayed up for %gs while %d were wanted: giving up (--give-up-after), exit 1",
            limit,
            master.wanted,
        )
        master.exit_code = 1
        master.stop(quick=True, why="--give-up-after")
