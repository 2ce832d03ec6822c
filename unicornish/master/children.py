"""The master's record of its children, and the one way to stop one.

A `WorkerProc` is what the master knows of a child it forked: its kind
(worker, spare or mold), slot, pid, generation, scoreboard page, app-metrics
arena and where it is in its life. `Children` is the one record of them, by
pid: a child's kind says which `WorkerTable` (the indices the loop asks on
every turn) holds it, and what its reaping means. `Stopper` signals them and
is the duty that SIGKILLs whoever outlives the wait it was given.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from unicornish.metrics.appmetrics import Arena
from unicornish.protocol import signal_name
from unicornish.scoreboard import BOOTING, Scoreboard

Kind = Literal["worker", "spare", "mold"]
WORKER: Kind = "worker"
SPARE: Kind = "spare"  # booted, waiting for a slot (--spares)
MOLD: Kind = "mold"  # promoted: new workers fork from it (--refork-after)


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
    kind: Kind = WORKER  # changed by `Children` only

    @property
    def label(self) -> str:
        if self.kind == MOLD:
            return "mold"
        return f"worker[{self.nr}]" if self.nr >= 0 else "spare"

    @property
    def stopping(self) -> bool:
        """Asked to stop, not reaped yet."""
        return self.stop_signal is not None

    def started_loop(self) -> bool:
        """Ready, or seen past booting on its scoreboard (an app that closed
        the report pipe it inherited cannot say so itself)."""
        return self.ready_at is not None or self.board.state[0] != BOOTING


class Slots:
    """The live workers of one generation, by slot: what the pool asks on every
    turn, answered without a pass over every worker.

    `empty_hint` holds slots known to have no live worker (each one that left,
    and what a full scan found); `high` is at least the highest slot held.
    Together they name the empty slots below a count in O(empty) in the common
    case; when they cannot account for every slot, a scan decides (and refills
    the hint), so a stale hint costs time, never a wrong answer.
    """

    __slots__ = ("by_nr", "empty_hint", "high", "extras")

    def __init__(self) -> None:
        self.by_nr: dict[int, WorkerProc] = {}
        self.empty_hint: set[int] = set()
        self.high = -1
        # Second workers of a slot, to be stopped: an aborted reload gives its
        # booting replacement the generation of the old worker of its slot.
        self.extras: list[WorkerProc] = []

    def __len__(self) -> int:
        return len(self.by_nr)

    def __contains__(self, nr: object) -> bool:
        return nr in self.by_nr

    def values(self) -> Iterable[WorkerProc]:
        return self.by_nr.values()

    def put(self, w: WorkerProc) -> None:
        kept = self.by_nr.get(w.nr)
        if kept is not None and kept is not w:
            # The ready one keeps the slot, or else the older one.
            if (kept.ready_at is not None, -kept.spawned_at) >= (
                w.ready_at is not None,
                -w.spawned_at,
            ):
                self.extras.append(w)
                return
            self.extras.append(kept)
        self.by_nr[w.nr] = w
        self.empty_hint.discard(w.nr)
        self.high = max(self.high, w.nr)

    def take_extras(self) -> list[WorkerProc]:
        extras, self.extras = self.extras, []
        return [w for w in extras if w.stop_signal is None]

    def take(self, w: WorkerProc) -> None:
        if w in self.extras:
            self.extras.remove(w)
        if self.by_nr.get(w.nr) is w:
            del self.by_nr[w.nr]
            self.empty_hint.add(w.nr)

    def above(self, wanted: int) -> list[WorkerProc]:
        """Workers in slots >= wanted (to be stopped), lowest first."""
        found = [self.by_nr[nr] for nr in range(wanted, self.high + 1) if nr in self.by_nr]
        if not found:
            self.high = min(self.high, wanted - 1)  # nothing up there: look no further next time
        return found

    def empty_below(self, wanted: int) -> list[int]:
        """Slots below `wanted` with no live worker, lowest first."""
        above = len(self.above(wanted)) if self.high >= wanted else 0
        if len(self.by_nr) - above >= wanted:
            return []
        hinted = {nr for nr in self.empty_hint if nr < wanted and nr not in self.by_nr}
        hinted.update(range(self.high + 1, wanted))
        if len(self.by_nr) - above + len(hinted) == wanted:
            return sorted(hinted)  # with the filled ones, exactly the slots 0..wanted-1
        empty = [nr for nr in range(wanted) if nr not in self.by_nr]
        self.empty_hint.update(empty)
        return empty


class WorkerTable:
    """Processes by pid. Read by every duty; changed by the master and the pool.

    Besides the processes by pid, it keeps the few sets the master's loop asks
    about on every turn, so that a turn costs what changed, not the number of
    workers: the ones still booting, the ones with a SIGKILL deadline, and the
    live ones of each generation by slot. So a worker's readiness, stop and
    generation change through the table (`mark_ready`, `mark_stopping`,
    `set_generation`, `set_kill_at`), never by assigning the field.
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, WorkerProc] = {}
        self.booting: dict[int, WorkerProc] = {}  # ready_at is None
        self.deadlines: dict[int, WorkerProc] = {}  # kill_at set, not killed yet
        self._live: dict[int, WorkerProc] = {}  # not asked to stop
        self._slots: dict[int, Slots] = {}  # generation -> live workers by slot (not spares)

    def __len__(self) -> int:
        return len(self._by_pid)

    def __iter__(self) -> Iterator[WorkerProc]:
        return iter(list(self._by_pid.values()))

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_pid

    def get(self, pid: int) -> WorkerProc | None:
        return self._by_pid.get(pid)

    def add(self, proc: WorkerProc) -> None:
        self._by_pid[proc.pid] = proc
        if proc.ready_at is None:
            self.booting[proc.pid] = proc
        if proc.kill_at is not None and not proc.killed:
            self.deadlines[proc.pid] = proc
        if proc.stop_signal is None:
            self._enter_live(proc)

    def pop(self, pid: int) -> WorkerProc | None:
        proc = self._by_pid.pop(pid, None)
        if proc is not None:
            self.booting.pop(pid, None)
            self.deadlines.pop(pid, None)
            self._leave_live(proc)
        return proc

    def live(self) -> list[WorkerProc]:
        """Not asked to stop: the ones that count."""
        return list(self._live.values())

    def live_count(self) -> int:
        return len(self._live)

    def ready_count(self) -> int:
        """Live workers that are ready: the live ones less those still booting."""
        booting = sum(1 for w in self.booting.values() if w.stop_signal is None)
        return self.live_count() - booting

    def slots(self, generation: int) -> Slots:
        """The live workers of `generation`, by slot."""
        found = self._slots.get(generation)
        if found is None:
            found = self._slots[generation] = Slots()
        return found

    def live_not_of(self, generation: int) -> list[WorkerProc]:
        """Live workers of any other generation (none, but during a reload)."""
        return [
            w for gen, slots in self._slots.items() if gen != generation for w in slots.values()
        ]

    # -- changes that the indices follow ----------------------------------------

    def mark_ready(self, w: WorkerProc, now: float) -> None:
        if w.ready_at is None:
            w.ready_at = now
        self.booting.pop(w.pid, None)

    def mark_stopping(self, w: WorkerProc, why: str) -> None:
        if w.stop_signal is None and w.pid in self._by_pid:
            self._leave_live(w)
        w.stop_signal = why

    def set_generation(self, w: WorkerProc, generation: int) -> None:
        live = self._live.get(w.pid) is w
        if live:
            self._leave_live(w)
        w.generation = generation
        if live:
            self._enter_live(w)

    def set_kill_at(self, w: WorkerProc, deadline: float | None) -> None:
        w.kill_at = deadline
        if deadline is not None and not w.killed and w.pid in self._by_pid:
            self.deadlines[w.pid] = w
        else:
            self.deadlines.pop(w.pid, None)

    def _enter_live(self, w: WorkerProc) -> None:
        self._live[w.pid] = w
        if w.nr >= 0:  # spares (nr -1) have no slot
            self.slots(w.generation).put(w)

    def _leave_live(self, w: WorkerProc) -> None:
        if self._live.pop(w.pid, None) is None:
            return
        slots = self._slots.get(w.generation)
        if slots is None:
            return
        slots.take(w)
        if not slots.by_nr and w.generation != max(self._slots):
            del self._slots[w.generation]  # an old generation is gone for good


class Children:
    """Every child the master forked and has not reaped, by pid, each of one kind.

    The kinds are kept apart (a table each) because the loop asks about
    workers on every turn, and a spare or a mold must never count as one;
    a child changes kind only here (`change_kind`), so the tables and the
    child's `kind` cannot disagree.
    """

    def __init__(self, workers: WorkerTable | None = None) -> None:
        self.workers = workers if workers is not None else WorkerTable()
        self.spares = WorkerTable()
        self.molds = WorkerTable()
        self._tables: dict[Kind, WorkerTable] = {
            WORKER: self.workers,
            SPARE: self.spares,
            MOLD: self.molds,
        }
        self._by_pid: dict[int, WorkerProc] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def __iter__(self) -> Iterator[WorkerProc]:
        return iter(list(self._by_pid.values()))

    def get(self, pid: int) -> WorkerProc | None:
        return self._by_pid.get(pid)

    def table_of(self, w: WorkerProc) -> WorkerTable:
        return self._tables[w.kind]

    def tables(self) -> Iterable[WorkerTable]:
        return self._tables.values()

    def add(self, w: WorkerProc) -> None:
        self._by_pid[w.pid] = w
        self.table_of(w).add(w)

    def pop(self, pid: int) -> WorkerProc | None:
        w = self._by_pid.pop(pid, None)
        if w is not None:
            self.table_of(w).pop(pid)
        return w

    def change_kind(self, w: WorkerProc, kind: Kind, nr: int | None = None) -> None:
        """A spare takes slot `nr`, a worker becomes the mold."""
        self.table_of(w).pop(w.pid)
        w.kind = kind
        if nr is not None:
            w.nr = nr
        self.table_of(w).add(w)

    def served(self) -> list[WorkerProc]:
        """Workers and molds (a mold counts what it did as a worker); not spares,
        which have not served yet."""
        return [*self.workers, *self.molds]

    def live_workers(self) -> list[WorkerProc]:
        return self.workers.live()

    def spare_count(self) -> int:
        return len(self.spares)


class Stopper:
    """Signals children; the duty that SIGKILLs those past their deadline."""

    def __init__(self, log: logging.Logger, children: Children) -> None:
        self.log = log
        self.children = children

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
        self.mark_stopping(w, signal_name(signum))
        self.kill_after(w, now + wait)

    def mark_stopping(self, w: WorkerProc, why: str) -> None:
        self.children.table_of(w).mark_stopping(w, why)

    def kill_after(self, w: WorkerProc, deadline: float) -> None:
        deadline = deadline if w.kill_at is None else min(w.kill_at, deadline)
        self.children.table_of(w).set_kill_at(w, deadline)

    def tick(self, now: float) -> float | None:
        """SIGKILL whoever is past its deadline; the next deadline."""
        upcoming: float | None = None
        for table in self.children.tables():
            for w in list(table.deadlines.values()):
                assert w.kill_at is not None
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
                table.deadlines.pop(w.pid, None)
        return upcoming
