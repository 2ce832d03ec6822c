"""--timeout: Unicorn's murder_lazy_workers, which kills *and* says when to look again.

A worker's beat is the monotonic time its current task started (or its last
`notify()`), stored in its scoreboard page; 0 while it is not in a task. A
task past the timeout gets the traceback signal (faulthandler dumps its
stack), then SIGKILL of its process group TRACEBACK_GRACE later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from unicornish.master.children import Stopper, WorkerProc, WorkerTable
from unicornish.master.state import View
from unicornish.protocol import TRACEBACK_SIGNAL

# After the traceback signal, how long a stuck worker gets to dump its stack.
TRACEBACK_GRACE = 0.2


@dataclass(eq=False)
class Timeouts:
    table: WorkerTable
    stopper: Stopper
    log: logging.Logger
    view: View
    # No task can pass its timeout before this (see tick): until then a turn
    # costs nothing, whatever the number of workers.
    next_scan: float | None = field(default=None, init=False)
    scanned_with: float | None = field(default=None, init=False)

    def tick(self, now: float) -> float | None:
        """kill_stuck_workers; the next time a task could pass its timeout.

        A scan at time s finds every due time: a busy worker's is its beat +
        timeout; one not in a task (or spawned later) can start one no sooner
        than s, so it is due no sooner than s + timeout. Beats only move later
        and a suspension only adds grace, so nothing can be due before the
        earliest of these: the table is scanned again then, or when the
        timeout itself changed (HUP), not on every turn.
        """
        # Off once the workers are being stopped; a drain still serves: still timed.
        timeout = None if self.view.stopping_workers else self.view.settings.timeout
        if not timeout:
            self.next_scan = None
            return None
        if timeout == self.scanned_with and self.next_scan is not None and now < self.next_scan:
            return self.next_scan
        self.scanned_with = timeout
        self.next_scan = self.scan(now, timeout)
        return self.next_scan

    def scan(self, now: float, timeout: float) -> float | None:
        grace_from = self.view.grace_from
        upcoming: float | None = None
        for w in self.table:
            if w.timed_out or w.killed:
                continue
            beat = w.board.beat[0]
            if not beat:
                # Not in a task (booting, idle in accept()): nothing wakes us when
                # one starts, so look again within `timeout`. A task starting at
                # b is then seen by b + timeout, and killed at b + timeout.
                due = now + timeout
            else:
                started = max(beat, grace_from)
                due = started + timeout
                if now >= due:
                    self.kill(w, now, timeout)
                    continue
            upcoming = due if upcoming is None else min(upcoming, due)
        return upcoming

    def kill(self, w: WorkerProc, now: float, timeout: float) -> None:
        w.timed_out = True
        self.log.error(
            "%s pid=%d timed out: task running for %.1fs (--timeout %gs); "
            "dumping its traceback, then SIGKILL",
            w.label,
            w.pid,
            now - w.board.beat[0],
            timeout,
        )
        self.stopper.signal(w, TRACEBACK_SIGNAL)
        self.stopper.kill_after(w, now + TRACEBACK_GRACE)
