"""The master's records of its children, and the one way to stop one.

A `WorkerProc` is what the master knows of a worker (or a spare): its slot,
pid, generation, scoreboard page, app-metrics arena and where it is in its life. A
`WorkerTable` holds them by pid. `Stopper` signals them and is the duty
that SIGKILLs whoever outlives the wait it was given.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

from unicornish.appmetrics import Arena
from unicornish.protocol import signal_name
from unicornish.scoreboard import BOOTING, Scoreboard


@dataclass(eq=False)
class WorkerProc:
    nr: int
    pid: int
    generation: int
    board: Scoreboard
    spawned_at: float
    spawned_wall: float
    max_tasks: int | None = None
    ready_at: float | None = None
    stop_signal: str | None = None
    kill_at: float | None = None
    killed: bool = False
    timed_out: bool = False
    recycled: str | None = None  # why the master recycled it (max-memory)
    from_spare: bool = False  # took its slot as a booted spare
    assign_fd: int | None = None  # a spare's end of the pipe its slot comes through
    arena: Arena | None = None  # its app metrics (shared memory); None once reaped

    @property
    def label(self) -> str:
        return f"worker[{self.nr}]" if self.nr >= 0 else "spare"

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def started_loop(self) -> bool:
        """Ready, or seen past booting on its scoreboard (an app that closed
        the report pipe it inherited cannot say so itself)."""
        return self.ready_at is not None or self.board.state[0] != BOOTING


class WorkerTable:
    """Processes by pid. Read by every duty; changed by the master and the pool."""

    def __init__(self) -> None:
        self._by_pid: dict[int, WorkerProc] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def __iter__(self) -> Iterator[WorkerProc]:
        return iter(list(self._by_pid.values()))

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_pid

    def add(self, proc: WorkerProc) -> None:
        self._by_pid[proc.pid] = proc

    def pop(self, pid: int) -> WorkerProc | None:
        return self._by_pid.pop(pid, None)

    def get(self, pid: int) -> WorkerProc | None:
        return self._by_pid.get(pid)

    def live(self) -> list[WorkerProc]:
        """Not asked to stop: the ones that count."""
        return [w for w in self._by_pid.values() if w.stop_signal is None]


class Stopper:
    """Signals children; the duty that SIGKILLs those past their deadline."""

    def __init__(self, log: logging.Logger, tables: list[WorkerTable]) -> None:
        self.log = log
        self.tables = tables

    def signal(self, w: WorkerProc, signum: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(w.pid, signum)
            else:
                os.kill(w.pid, signum)
        except ProcessLookupError:
            if group:  # not yet (or no longer) leading its group
                try:
                    os.kill(w.pid, signum)
                except OSError:
                    pass
        except PermissionError as exc:
            self.log.error("cannot signal %s pid=%d: %s", w.label, w.pid, exc.strerror)

    def stop(self, w: WorkerProc, signum: int, now: float, wait: float) -> None:
        """Ask a worker to stop; SIGKILL its process group once `wait` has passed."""
        self.signal(w, signum, group=signum == signal.SIGTERM)
        w.stop_signal = signal_name(signum)
        self.kill_after(w, now + wait)

    def kill_after(self, w: WorkerProc, deadline: float) -> None:
        w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)

    def tick(self, now: float) -> float | None:
        """SIGKILL whoever is past its deadline; the next deadline."""
        upcoming: float | None = None
        for table in self.tables:
            for w in table:
                if w.kill_at is None or w.killed:
                    continue
                if now < w.kill_at:
                    upcoming = w.kill_at if upcoming is None else min(upcoming, w.kill_at)
                    continue
                if w.timed_out:
                    self.log.error("%s pid=%d killed after its task timed out", w.label, w.pid)
                elif w.stopping and w.nr >= 0:
                    self.log.warning(
                        "%s pid=%d did not stop after %s; sending SIGKILL",
                        w.label,
                        w.pid,
                        w.stop_signal,
                    )
                self.signal(w, signal.SIGKILL, group=True)
                w.killed = True
        return upcoming
