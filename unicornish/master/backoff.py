"""Crash-loop backoff, per worker slot: pure logic, so it can be tested alone.

A worker that dies before it is ready, or fails on its own (non-zero exit,
a crash signal) within STABLE_AFTER seconds of being ready, counts as a
crash. The first crash of a slot is respawned at once; each further one
waits twice as long (with jitter, capped). A worker that stays up for
STABLE_AFTER seconds clears its slot's count. A SIGKILL from outside after
ready is not a crash: the respawn benchmark and `kill -9` stay instant.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field

BASE_DELAY = 0.1
MAX_DELAY = 10.0
STABLE_AFTER = 2.0
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGSYS}
)


def failed_on_its_own(exit_code: int | None, signum: int | None) -> bool:
    if signum is not None:
        return signum in CRASH_SIGNALS
    return exit_code not in (0, None)


@dataclass
class SlotBackoff:
    crashes: int = 0
    not_before: float = 0.0


@dataclass
class CrashBackoff:
    base: float = BASE_DELAY
    cap: float = MAX_DELAY
    stable_after: float = STABLE_AFTER
    slots: dict[int, SlotBackoff] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def record_exit(
        self,
        nr: int,
        now: float,
        ready_at: float | None,
        exit_code: int | None,
        signum: int | None,
    ) -> float:
        """Record a worker's death; return the delay before its slot respawns."""
        slot = self.slots.setdefault(nr, SlotBackoff())
        up_for = None if ready_at is None else now - ready_at
        if up_for is not None and up_for >= self.stable_after:
            slot.crashes = 0
        crashed = ready_at is None or (
            failed_on_its_own(exit_code, signum)
            and up_for is not None
            and up_for < self.stable_after
        )
        if not crashed:
            slot.crashes = 0
            slot.not_before = now
            return 0.0
        slot.crashes += 1
        if slot.crashes == 1:
            delay = 0.0
        else:
            delay = min(self.cap, self.base * 2 ** (slot.crashes - 2))
            delay *= self.rng.uniform(0.8, 1.2)
        slot.not_before = now + delay
        return delay

    def crashes(self, nr: int) -> int:
        slot = self.slots.get(nr)
        return slot.crashes if slot else 0

    def not_before(self, nr: int) -> float:
        slot = self.slots.get(nr)
        return slot.not_before if slot else 0.0

    def forget(self, nr: int) -> None:
        self.slots.pop(nr, None)
