"""The worker pool: how many workers are wanted, which slots to fill, and filling them.

`plan_slots` is the pure decision (unit-tested on its own): which slots need
a new worker now, which workers must go, and when a slot held back by the
crash-loop backoff may be filled. `Pool.tick` carries it out and returns
when it next needs the master, from the same plan, so the two cannot
disagree. During a rolling reload (HUP) a running old worker is replaced a
few slots at a time, and only stopped once the new one of its slot is ready.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from unicornish.master.backoff import CrashBackoff
from unicornish.master.children import Children, Slots, Stopper, WorkerProc
from unicornish.master.spawner import Release, Spawner
from unicornish.master.state import State
from unicornish.protocol import (
    EXIT_BOOT_FAILED,
    EXIT_UNASKED,
    REPORT_READY,
    REPORT_WARM,
    decode_reports,
)

# While a worker boots, its scoreboard is looked at this often, for an app
# that closed the report pipe it inherited (it cannot say it is ready).
BOOT_CHECK = 0.25
# Forking stops after this long in one turn, and goes on after the master has
# read its signals: a TERM during a start of thousands of workers is acted on at once.
SPAWN_SLICE = 0.05


@dataclass
class SlotPlan:
    spawn: list[int] = field(default_factory=list)
    stop: list[WorkerProc] = field(default_factory=list)
    reload_done: bool = False
    next_at: float | None = None  # the earliest backoff that holds a slot back


def plan_slots(
    wanted: int,
    current: Slots,
    old: list[WorkerProc],
    rolling: bool,
    not_before: Callable[[int], float],
    now: float,
    batch: int | None = None,
) -> SlotPlan:
    """`current`: live workers of the current generation by slot; `old`: of older ones.

    Outside a reload (`old` empty) this costs what is missing or extra, not
    the number of workers: the master runs it on every turn.
    """
    plan = SlotPlan()
    # A second worker in a slot (an aborted reload keeps a booting replacement
    # beside the old worker of its slot) goes first.
    plan.stop = current.take_extras() + current.above(wanted)
    old_slots = set()
    if old or rolling:
        ready_slots = {w.nr for w in current.values() if w.ready_at is not None}
        # No old worker is stopped before one new worker proved the new app boots,
        # not even one above the new count: the reload may yet fail.
        validated = bool(ready_slots) or wanted == 0
        for w in old:
            if w.nr in ready_slots or (w.nr >= wanted and validated):
                plan.stop.append(w)
            elif w.nr < wanted:
                old_slots.add(w.nr)
        if rolling and not old and all(nr in ready_slots for nr in range(wanted)):
            plan.reload_done = True
    empty = current.empty_below(wanted)
    if not empty:
        return plan  # the common case: every slot filled
    # Replacing a running old worker waits for the new one to be ready, a few
    # at a time: a broken reload must never cost more than that.
    batch = batch or max(1, math.ceil(wanted / 4))
    replacing = 0
    if old_slots:
        replacing = sum(1 for w in current.values() if w.ready_at is None and w.nr in old_slots)
    for nr in empty:
        when = not_before(nr)
        if when > now:
            plan.next_at = when if plan.next_at is None else min(plan.next_at, when)
            continue
        if nr in old_slots:
            if replacing >= batch:
                continue  # the replacement's ready report (or death) wakes us
            replacing += 1
        plan.spawn.append(nr)
    return plan


def jittered_max_tasks(limit: int | None, rng: random.Random) -> int | None:
    """--max-tasks plus 0-10 %, so workers started together are not recycled together."""
    if not limit:
        return None
    return max(1, limit + rng.randint(0, max(0, limit // 10)))


class SpareSource(Protocol):
    def assign(self, nr: int, release: Release) -> WorkerProc | None: ...


class Pool:
    """The owner of the count wanted (`state.wanted`)."""

    def __init__(
        self,
        children: Children,
        spawner: Spawner,
        stopper: Stopper,
        log: logging.Logger,
        state: State,
    ) -> None:
        self.children = children
        self.table = children.workers
        self.spawner = spawner
        self.stopper = stopper
        self.log = log
        self.state = state
        self.backoff = CrashBackoff()
        self.rng = random.Random()
        self.spares: SpareSource | None = None
        self.scale_log = ScaleLog(log)
        # Old workers replaced at a time (None: a quarter of the count, as for HUP).
        self.batch: int | None = None
        self.on_reload_done: Callable[[], None] = lambda: None
        # A worker said it is warm (--refork-after).
        self.on_warm: Callable[[WorkerProc], None] = lambda w: None

    @property
    def wanted(self) -> int:
        return self.state.wanted

    # -- the duty ---------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """maintain_worker_count: stop the extra, spawn the missing; the next wake-up."""
        if self.state.stopping_workers:
            return None
        self.notice_ready(now)
        release = self.state.release
        current = self.table.slots(release.generation)
        old = self.table.live_not_of(release.generation)
        rolling = self.state.rolling is not None
        plan = plan_slots(
            self.wanted, current, old, rolling, self.backoff.not_before, now, self.batch
        )
        for w in plan.stop:
            self.stopper.stop(w, signal.SIGQUIT, now, release.settings.graceful_timeout)
        if plan.reload_done:
            self.on_reload_done()  # the reloader ends the rollout
        next_at = plan.next_at
        if plan.spawn:
            done, failed = self.spawn_missing_workers(plan.spawn)
            if not done:
                next_at = now  # a slice was used up: go on after reading signals
            for nr in failed:  # a failed fork backs off: its retry is a deadline too
                retry = self.backoff.not_before(nr)
                next_at = retry if next_at is None else min(next_at, retry)
        if any(not w.stopping for w in self.table.booting.values()):
            next_at = min(next_at or math.inf, now + BOOT_CHECK)
        return next_at

    def spawn_missing_workers(self, nrs: list[int]) -> tuple[bool, list[int]]:
        """(False when the time slice ran out before every slot was tried, the
        slots whose fork failed)."""
        self.log.info("spawning %d missing workers:", len(nrs))
        started = time.monotonic()
        release = self.state.release
        failed: list[int] = []
        for nr in nrs:
            if self.state.stopping_workers:
                break
            if time.monotonic() - started > SPAWN_SLICE:
                return False, failed
            if not self.spawn_worker(nr, release):
                failed.append(nr)
        return True, failed

    def spawn_worker(self, nr: int, release: Release) -> bool:
        if self.spares is not None and self.spares.assign(nr, release) is not None:
            return True
        limit = jittered_max_tasks(release.settings.max_tasks, self.rng)
        proc = self.spawner.spawn(nr, release, limit)
        if proc is None:
            self.backoff.record_exit(nr, time.monotonic(), None, 1, None)
            return False
        self.children.add(proc)
        return True

    def scale(self, wanted: int, why: str | None = None, times: int = 1, note: str = "") -> None:
        """Change the count; `why` (TTIN, WINCH, ...) is logged, a reload or the
        autoscaler logs its own line."""
        if why not in BURSTY:
            # Whatever a burst changed is said before another change, so that the
            # log reads in the order the count changed.
            self.scale_log.flush()
        self.state.wanted = max(0, wanted)
        if why is not None:
            self.scale_log.changed(time.monotonic(), why, times, self.wanted, note)

    def held_back(self, now: float) -> int:
        """Wanted slots the crash-loop backoff keeps empty right now (for metrics)."""
        return sum(
            1
            for nr, slot in self.backoff.slots.items()
            if nr < self.wanted and slot.not_before > now
        )

    # -- reports and deaths -------------------------------------------------------

    def read_reports(self, fd: int) -> None:
        now = time.monotonic()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            data = b""
        for pid, event in decode_reports(data):
            w = self.table.get(pid)
            if w is None:
                continue
            if event == REPORT_READY and w.ready_at is None:
                self.table.mark_ready(w, now)
            elif event == REPORT_WARM:
                self.on_warm(w)
        self.notice_ready(now)

    def notice_ready(self, now: float) -> None:
        """Booting workers seen past booting on their scoreboard are ready."""
        for w in list(self.table.booting.values()):
            if w.started_loop():
                self.table.mark_ready(w, now)

    def record_exit(
        self, w: WorkerProc, code: int | None, signum: int | None, now: float, tasks: int
    ) -> None:
        """Feed the crash-loop backoff; say so when a slot is in a loop."""
        recycled = bool(w.max_tasks) and tasks >= (w.max_tasks or 0)
        # An exit 0 nobody asked for (sys.exit(0) in worker_start, an after_fork
        # that ends the process) right after spawning is a loop too: back off, or
        # the master would fork as fast as it can. A --max-tasks recycle is asked for.
        counted = EXIT_UNASKED if code == 0 and not recycled else code
        delay = self.backoff.record_exit(w.nr, now, w.ready_at, counted, signum)
        if delay <= 0:
            return
        if code == EXIT_BOOT_FAILED:
            why = "could not boot"
        elif code == 0:
            why = "exited soon after spawning"
        else:
            why = "died soon after spawning"
        self.log.warning(
            "%s %s (%d times in a row): crash loop, respawning in %.2fs",
            w.label,
            why,
            self.backoff.crashes(w.nr),
            delay,
        )


# TTIN/TTOU changes closer together than this are one burst, logged once.
BURST_WINDOW = 0.1
BURSTY = ("TTIN", "TTOU")


class ScaleLog:
    """One line for a change of the count, and one for the rest of a burst of them.

    The kernel merges a signal sent while the same one is still pending, so a
    burst of TTIN or TTOU may arrive as fewer signals than were sent; every
    one that arrives counts, in both directions alike.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.quiet_until = 0.0
        self.pending: dict[str, int] = {}
        self.last_why = ""
        self.wanted = 0

    def changed(self, now: float, why: str, times: int, wanted: int, note: str = "") -> None:
        self.wanted = wanted
        self.last_why = why
        if why not in BURSTY or (now >= self.quiet_until and not self.pending):
            more = f" ({times} signals)" if times > 1 else ""
            self.log.info("%s: %d workers wanted%s%s", why, wanted, note, more)
        else:
            self.pending[why] = self.pending.get(why, 0) + times
        if why in BURSTY:
            self.quiet_until = now + BURST_WINDOW

    def flush(self) -> None:
        if not self.pending:
            return
        burst = ", ".join(f"{why} x{n}" for why, n in self.pending.items())
        self.log.info("%s: %d workers wanted (a burst: %s more)", self.last_why, self.wanted, burst)
        self.pending.clear()

    def tick(self, now: float) -> float | None:
        if not self.pending:
            return None
        if now < self.quiet_until:
            return self.quiet_until
        self.flush()
        return None
