"""--workers MIN:MAX: the master keeps --idle-workers K idle, between MIN and MAX.

A worker's scoreboard says whether it is booting, idle (waiting in
`worker.accept()` or inside `with worker.idle():`) or busy (in a task). The
master cannot see the work queued behind its workers; what it sees is the
idle count, and it keeps that at K:

* fewer than K idle: add the missing ones, one step at a time (STEP apart).
  Workers booting or not yet forked count as idle: they will be, and
  counting them is what stops the master from forking again and again for
  the same demand while a slow app boots. A step that was not enough (the
  workers it added were all taken, and still fewer than K are idle) makes
  the next step twice as big, as TCP's slow start does: a burst is met in
  a few steps, while a single extra request adds a single worker.
* more than K idle, continuously for --scale-down-after: retire one worker
  (QUIT, the highest nr: it finishes its task). The timer starts again after
  each retirement and after any moment with K or fewer idle, so the count
  falls by at most one per period, and a steady load near a threshold does
  not make it swing (the hysteresis is the gap between "fewer than K" and
  "more than K for a whole period").

`decide` is the pure decision (unit-tested on its own: bounds, hysteresis,
rate limit); `Autoscaler.tick` reads the scoreboards, carries it out through
the pool and returns when it needs to look again. Writes to a scoreboard are
silent (a store into shared memory, no system call), so nothing wakes the
master when a worker goes busy: while the count is adaptive it looks on its
own, every LOOK while work is flowing and the count may have to grow, every
IDLE_LOOK when every worker is idle or the count is at MAX (see the
constants). A fixed count (N, auto, MIN = MAX, or after `ctl scale N`)
never wakes the master.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from unicornish.config import Settings
from unicornish.master.children import WorkerTable
from unicornish.master.state import View
from unicornish.protocol import MAX_WORKERS
from unicornish.scoreboard import BOOTING, IDLE

# Scale-up steps are at least this far apart: at most 5 a second. Forking a
# worker costs the master a few ms (more with a big --preload heap) and a new
# worker ~0.1 s of CPU to boot (bench: 8 TTIN ready in ~90 ms); 0.2 s lets the
# last step's workers boot and show on their scoreboards before the next
# step is sized, and bounds the forks a flood (or an app that never waits, so
# is always busy) can cause: the step size doubles at most once per STEP.
STEP = 0.2
# How often the master looks at the scoreboards while a worker is busy (or
# starting) and the count is below MAX: the idle count can drop at any
# moment, and a burst waits for this long at most before the first step.
LOOK = 0.2
# How often it looks when every worker is idle, or the count is at MAX: a new
# request is taken at once by one of the K idle workers, and only a burst
# wider than K waits (up to this long) for the first step; at MAX only a
# retirement can come, and that needs a whole --scale-down-after anyway. An
# idle adaptive master so wakes once a second (a fixed count: never).
IDLE_LOOK = 1.0


@dataclass(frozen=True)
class Policy:
    low: int
    high: int
    idle: int  # K: idle workers to keep
    scale_down_after: float

    @property
    def adaptive(self) -> bool:
        return self.low < self.high

    def clamp(self, n: int) -> int:
        return min(self.high, max(self.low, n))


@dataclass(frozen=True)
class Seen:
    """The running workers of the wanted slots, by their scoreboard state."""

    idle: int = 0
    busy: int = 0
    booting: int = 0

    @property
    def running(self) -> int:
        return self.idle + self.busy + self.booting


@dataclass(frozen=True)
class Memory:
    """What the decision carries from one look to the next."""

    step_at: float = 0.0  # no scale-up step before this
    last_step: int = 0  # workers the previous step of an unbroken scale-up added
    excess_since: float | None = None  # more than K idle, without a break, since then


@dataclass(frozen=True)
class Decision:
    wanted: int
    reason: str | None  # the log line, when `wanted` changed
    memory: Memory
    wake: float  # when to look again


def decide(policy: Policy, wanted: int, seen: Seen, memory: Memory, now: float) -> Decision:
    """The worker count to want now, why, and when to look again."""
    low, high, k = policy.low, policy.high, policy.idle
    if not low <= wanted <= high:
        new = policy.clamp(wanted)
        reason = f"workers {low}:{high}: {new} workers wanted"
        return Decision(new, reason, Memory(step_at=now + STEP), now + LOOK)
    missing = max(0, wanted - seen.running)
    spare = seen.idle + seen.booting + missing  # idle, or about to be
    working = seen.busy > 0 or seen.booting > 0 or missing > 0
    look = now + (LOOK if working and wanted < high else IDLE_LOOK)
    if seen.idle >= k:
        memory = replace(memory, last_step=0)  # demand met: the next scale-up starts small
    if spare < k:
        memory = replace(memory, excess_since=None)
        if wanted >= high:
            return Decision(wanted, None, memory, look)
        if now < memory.step_at:
            return Decision(wanted, None, memory, memory.step_at)
        new = min(high, wanted + max(k - spare, 2 * memory.last_step))
        starting = seen.booting + missing
        also = f", {starting} starting" if starting else ""
        reason = (
            f"scale up: {seen.idle} of {seen.running} idle{also} (want {k} idle): "
            f"{new} workers wanted"
        )
        memory = replace(memory, step_at=now + STEP, last_step=new - wanted)
        return Decision(new, reason, memory, now + STEP)
    if spare > k and wanted > low:
        since = now if memory.excess_since is None else memory.excess_since
        due = since + policy.scale_down_after
        if now < due:
            return Decision(wanted, None, replace(memory, excess_since=since), min(due, look))
        new = wanted - 1
        reason = (
            f"scale down: {seen.idle} of {seen.running} idle for "
            f"{policy.scale_down_after:g}s (want {k} idle): {new} workers wanted"
        )
        # The timer starts again: at most one retirement per period.
        return Decision(new, reason, replace(memory, excess_since=None), look)
    return Decision(wanted, None, replace(memory, excess_since=None), look)


def policy_of(settings: Settings) -> Policy | None:
    if settings.workers_min is None or settings.workers_max is None:
        return None
    return Policy(
        settings.workers_min,
        settings.workers_max,
        settings.idle_workers,
        settings.scale_down_after,
    )


def count_after_reload(settings: Settings, current: int) -> int:
    """HUP: a fixed count goes back to the configured one; an adaptive one keeps
    the current count, brought between the (re-read) bounds."""
    policy = policy_of(settings)
    if policy is None:
        return settings.workers
    return policy.clamp(current)


def handover(settings: Settings, policy: Policy | None, wanted: int) -> str | None:
    """USR2: the count the new master should start with, as `N`, or `N,MIN:MAX`
    when the bounds moved (TTIN/TTOU) or `ctl scale` fixed an adaptive count.

    None when there is nothing to hand over: a fixed count as configured (the
    new master reads its own configuration, which may be new), or no worker at
    all (WINCH, `scale 0`: a new master with none could never prove itself ready).
    """
    if wanted <= 0:
        return None
    moved = policy != policy_of(settings)
    adaptive = policy is not None and policy.adaptive
    if not moved and not adaptive and wanted == settings.workers:
        return None
    if not moved:
        return str(wanted)
    low, high = (policy.low, policy.high) if policy is not None else (wanted, wanted)
    return f"{wanted},{low}:{high}"


def parse_handover(text: str) -> tuple[int, tuple[int, int] | None]:
    """`N` or `N,MIN:MAX` (handover's form); ValueError when it is anything else."""
    count, comma, bounds = text.partition(",")
    numbers = [count, *bounds.split(":")] if comma else [count]
    if len(numbers) not in (1, 3) or not all(n.isdigit() and len(n) <= 5 for n in numbers):
        raise ValueError(text)
    wanted, *rest = (int(n) for n in numbers)
    if not 0 < wanted <= MAX_WORKERS:
        raise ValueError(text)
    if not rest:
        return wanted, None
    low, high = rest
    if not low <= wanted <= high <= MAX_WORKERS:
        raise ValueError(text)
    return wanted, (low, high)


class Autoscaler:
    """The duty. Its bounds start from the settings and move with TTIN/TTOU;
    `ctl scale N` (and WINCH) fix the count; HUP reads them again."""

    def __init__(
        self,
        table: WorkerTable,
        log: logging.Logger,
        view: View,
        scale: Callable[[int], None],
    ) -> None:
        self.table = table
        self.log = log
        self.view = view
        self.scale = scale
        self.policy: Policy | None = None
        self.memory = Memory()
        self.configure(view.settings)

    @property
    def adaptive(self) -> bool:
        return self.policy is not None and self.policy.adaptive

    def configure(self, settings: Settings) -> None:
        """At start and with each new release (HUP, or the one a failed HUP goes back to)."""
        self.policy = policy_of(settings)
        self.memory = Memory()

    def describe(self) -> str | None:
        policy = self.policy
        if policy is None or not policy.adaptive:
            return None
        return (
            f"adaptive worker count {policy.low}:{policy.high}: keeping {policy.idle} idle "
            f"(--idle-workers), one retired after more were idle for "
            f"{policy.scale_down_after:g}s (--scale-down-after)"
        )

    def bounds(self) -> tuple[int, int]:
        """For status: a fixed count is its own MIN and MAX."""
        if self.policy is None:
            wanted = self.view.wanted
            return wanted, wanted
        return self.policy.low, self.policy.high

    def shift(self, delta: int, wanted: int) -> int:
        """TTIN (+) / TTOU (-): MIN and MAX move together; the new count wanted."""
        policy = self.policy
        if policy is None:
            return max(0, wanted + delta)
        if delta > 0:
            high = min(MAX_WORKERS, policy.high + delta)
            low = min(high, policy.low + delta)
        else:
            low = max(0, policy.low + delta)
            high = max(low, policy.high + delta)
        self.policy = replace(policy, low=low, high=high)
        self.memory = Memory()
        return self.policy.clamp(wanted + delta)

    def take_over(self, wanted: int, bounds: tuple[int, int] | None, settings: Settings) -> int:
        """USR2, in the new master: start from the old master's count (and bounds,
        when they had moved); the count to want. A HUP configures them again."""
        if bounds is not None:
            low, high = bounds
            if low == high:
                self.fix()
            else:
                base = self.policy or Policy(
                    low, high, settings.idle_workers, settings.scale_down_after
                )
                self.policy = replace(base, low=low, high=high)
                self.memory = Memory()
        return self.policy.clamp(wanted) if self.policy is not None else wanted

    def fix(self) -> bool:
        """An exact count (`ctl scale N`, WINCH): MIN = MAX = N until the next HUP.
        True when this turned the adaptive count off."""
        was = self.adaptive
        self.policy = None
        self.memory = Memory()
        return was

    def idle_count(self) -> int:
        wanted = self.view.wanted
        return sum(1 for w in self.table.live() if 0 <= w.nr < wanted and w.board.state[0] == IDLE)

    def look(self, wanted: int) -> Seen:
        idle = busy = booting = 0
        for w in self.table.live():
            if not 0 <= w.nr < wanted:
                continue  # above the count: the pool stops it in this turn
            state = w.board.state[0]
            if state == IDLE:
                idle += 1
            elif state == BOOTING:
                booting += 1
            else:
                busy += 1
        return Seen(idle, busy, booting)

    def tick(self, now: float) -> float | None:
        policy = self.policy
        if policy is None or not policy.adaptive or self.view.stopping_workers:
            return None
        if self.view.rolling is not None:
            # The count holds while a HUP (or a refork) rolls out (old and new workers side by
            # side would be miscounted); look again once it is done.
            self.memory = Memory()
            return now + LOOK
        wanted = self.view.wanted
        decision = decide(policy, wanted, self.look(wanted), self.memory, now)
        self.memory = decision.memory
        if decision.wanted != wanted:
            self.scale(decision.wanted)
            self.log.info("%s", decision.reason)
        return decision.wake
