"""A worker's heartbeat, in memory shared with the master.

Each worker gets one anonymous shared page, mapped by the master before the
fork. A beat is a plain store into it: no file on disk, no system call, so
the worker loop can beat on every task. The master only reads, but for the
one byte that says it asked the worker to become the mold.

Layout (native order, 8-byte aligned):
    0  float64  beat: CLOCK_MONOTONIC at the start of the current task (or
                 the last notify()); 0.0 while the worker is not in a task
    8  uint64   tasks completed
    16 uint8    state: booting, idle, busy, mold
    17 uint8    promotion asked: set by the master right before PROMOTE_SIGNAL
                 (the kernel sends SIGURG too, for TCP urgent data to a socket
                 the app gave an owner: without this byte it is ignored)
    20 uint32   open client connections (the HTTP worker; 0 for a task worker)
    64 float64  task durations: one count per TASK_DURATION_BUCKETS bucket
                 (not cumulative), +Inf last, then the sum of the durations
"""

from __future__ import annotations

import mmap
from typing import ClassVar

from unicornish.protocol import TASK_DURATION_BUCKETS

BOOTING = 0
IDLE = 1
BUSY = 2
MOLD = 3  # promoted: takes no tasks, new workers fork from it (--refork-after)
STATE_NAMES = {BOOTING: "booting", IDLE: "idle", BUSY: "busy", MOLD: "mold"}

_DURATIONS_AT = 64
# Bucket counts, +Inf, the sum.
DURATION_SLOTS = len(TASK_DURATION_BUCKETS) + 2
SIZE = _DURATIONS_AT + DURATION_SLOTS * 8


class Scoreboard:
    __slots__ = (
        "_map",
        "beat",
        "tasks",
        "state",
        "promote",
        "connections",
        "durations",
        "duration_sum",
    )

    # Whether workers record task durations. Off until the master says something
    # can read them (--metrics or --control): then each fork inherits it on. The
    # recording is a fifth of an empty task's cost, not worth paying for nobody.
    record_durations: ClassVar[bool] = False

    def __init__(self, fd: int = -1) -> None:
        # fd: a memfd of SIZE bytes, for a worker the master does not fork itself
        # (a mold's child gets the page through a unix socket, not through fork).
        flags = mmap.MAP_SHARED if fd >= 0 else mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
        self._map = mmap.mmap(fd, SIZE, flags=flags)
        view = memoryview(self._map)
        # One-element typed views: `board.beat[0] = t` is a single store.
        self.beat = view[0:8].cast("d")
        self.tasks = view[8:16].cast("Q")
        self.state = view[16:17].cast("B")
        self.promote = view[17:18].cast("B")
        self.connections = view[20:24].cast("I")
        # Floats, not integers: `counts[k] += 1.0` is the cheapest update a
        # memoryview has, and a float64 counts exactly up to 2**53.
        end = _DURATIONS_AT + DURATION_SLOTS * 8
        self.durations = view[_DURATIONS_AT : end - 8].cast("d")
        self.duration_sum = view[end - 8 : end].cast("d")

    def beat_time(self) -> float:
        return float(self.beat[0])

    def task_count(self) -> int:
        return int(self.tasks[0])

    def task_durations(self) -> list[float]:
        """The bucket counts (+Inf last, not cumulative), then the sum."""
        return [*self.durations.tolist(), float(self.duration_sum[0])]

    def connection_count(self) -> int:
        return int(self.connections[0])

    def state_name(self) -> str:
        return STATE_NAMES.get(int(self.state[0]), "unknown")

    def keep_from_children(self) -> None:
        """Once its worker is forked, no later child maps this page: a worker
        cannot write its siblings' heartbeats, and a fork copies no page table
        entries for them (nothing to unmap in each child either)."""
        try:
            self._map.madvise(mmap.MADV_DONTFORK)
        except (AttributeError, OSError):
            pass  # not Linux: the child keeps a mapping it never uses

    def close(self) -> None:
        views = (
            self.beat,
            self.tasks,
            self.state,
            self.promote,
            self.connections,
            self.durations,
            self.duration_sum,
        )
        for view in views:
            view.release()
        self._map.close()
