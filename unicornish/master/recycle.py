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
Each is a duty of the master's loop: `tick(now)` does the work that is due
and returns when it is next due, so what it does and when the master wakes
for it come from the same code.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from unicornish.master.backoff import STABLE_AFTER
from unicornish.master.children import Stopper, WorkerProc, WorkerTable
from unicornish.master.state import View

MEMORY_CHECK_INTERVAL = 3.0
MIB = 1024 * 1024


@dataclass(eq=False)
class MemoryLimit:
    table: WorkerTable
    stopper: Stopper
    log: logging.Logger
    view: View
    next_check: float | None = field(default=None, init=False)

    def tick(self, now: float) -> float | None:
        limit = self.view.settings.max_memory
        if not limit or self.view.stopping_workers:
            self.next_check = None
            return None
        if self.next_check is None:
            self.next_check = now + MEMORY_CHECK_INTERVAL
        if now >= self.next_check:
            self.next_check = now + MEMORY_CHECK_INTERVAL
            limit_bytes = int(limit * MIB)
            for w in self.table.live():
                uss = _uss_over(w.pid, limit_bytes)
                if uss is not None:
                    self.recycle(w, uss, limit, now)
        return self.next_check

    def recycle(self, w: WorkerProc, uss: int, limit: float, now: float) -> None:
        self.log.warning(
            "%s pid=%d uses %.1f MiB USS, over --max-memory %g MiB: recycling it gracefully",
            w.label,
            w.pid,
            uss / MIB,
            limit,
        )
        w.recycled = "max-memory"
        self.stopper.stop(w, signal.SIGQUIT, now, self.view.settings.graceful_timeout)


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

    def __init__(
        self,
        table: WorkerTable,
        log: logging.Logger,
        view: View,
        give_up: Callable[[], None],
        now: float,
    ) -> None:
        self.table = table
        self.log = log
        self.view = view
        self.give_up = give_up
        self.last_ok = now
        self.idle = True

    def limit(self) -> float | None:
        """Off once the workers are being stopped: their deaths are asked for."""
        return None if self.view.stopping_workers else self.view.settings.give_up_after

    def on_reaped(self, w: WorkerProc, now: float) -> None:
        """A worker that had stayed up kept things healthy until now."""
        limit = self.limit()
        if limit and w.ready_at is not None and now - w.ready_at >= min(limit, STABLE_AFTER):
            self.last_ok = max(self.last_ok, now)

    def tick(self, now: float) -> float | None:
        limit = self.limit()
        wanted = self.view.wanted
        if not limit or wanted == 0:
            self.idle = True
            return None
        if self.idle:
            # Just starting to watch: the clock starts now.
            self.idle = False
            self.last_ok = now
            return now + limit
        stable = min(limit, STABLE_AFTER)
        up: list[float] = [w.ready_at for w in self.table.live() if w.ready_at is not None]
        if any(now - ready_at >= stable for ready_at in up):
            self.last_ok = now
            # Healthy: nothing to watch until a death, and a death wakes the master.
            return None
        if up:
            return min(ready_at + stable for ready_at in up)  # wait for one to prove itself
        give_up_at = max(self.last_ok, self.view.grace_from) + limit
        if now < give_up_at:
            return give_up_at
        self.log.error(
            "no worker stayed up for %gs while %d were wanted: giving up (--give-up-after), exit 1",
            limit,
            wanted,
        )
        self.give_up()
        return now  # stopping now: the other duties must see it at once
