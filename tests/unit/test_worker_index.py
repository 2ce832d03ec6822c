"""The master's index of its workers (workers.WorkerTable, Slots), the pool's plan
built on it (pool.plan_slots) and the --timeout scan that runs only when
something can be due (timeouts.Timeouts). No processes: fake scoreboards."""

from __future__ import annotations

import logging
import random
from array import array
from typing import Any

from unicornish.config import Settings
from unicornish.master.children import Children, Slots, Stopper, WorkerProc, WorkerTable
from unicornish.master.pool import plan_slots
from unicornish.master.spawner import Release
from unicornish.master.state import State
from unicornish.master.timeouts import Timeouts
from unicornish.scoreboard import BOOTING

LOG = logging.getLogger("test")


class FakeBoard:
    def __init__(self) -> None:
        self.beat = array("d", [0.0])
        self.tasks = array("Q", [0])
        self.state = array("B", [BOOTING])


_pids = iter(range(1000, 10**6))


def proc(nr: int, generation: int = 0, ready: bool = True) -> WorkerProc:
    w = WorkerProc(nr, next(_pids), generation, FakeBoard(), 0.0, 0.0)  # type: ignore[arg-type]
    w.ready_at = 1.0 if ready else None
    return w


def table_of(*procs: WorkerProc) -> WorkerTable:
    table = WorkerTable()
    for w in procs:
        table.add(w)
    return table


def state(**settings: Any) -> State:
    return State(Release(Settings(**settings), None, None, "app.py"), 0)


def never(nr: int) -> float:
    return 0.0


class NoSignals(Stopper):
    def __init__(self, table: WorkerTable) -> None:
        super().__init__(LOG, Children(table))
        self.sent: list[tuple[int, int]] = []

    def signal(self, w: WorkerProc, signum: int, group: bool = False) -> None:
        self.sent.append((w.pid, signum))


# -- Slots ---------------------------------------------------------------------


def test_empty_below_is_every_slot_for_a_new_generation():
    assert Slots().empty_below(4) == [0, 1, 2, 3]


def test_a_worker_that_leaves_is_the_one_empty_slot():
    table = table_of(*(proc(nr) for nr in range(8)))
    slots = table.slots(0)
    assert slots.empty_below(8) == [] and slots.above(8) == []
    w5 = slots.by_nr[5]
    table.pop(w5.pid)
    assert slots.empty_below(8) == [5]
    table.add(proc(5))
    assert slots.empty_below(8) == []


def test_a_stopped_worker_leaves_its_slot_and_the_live_count():
    table = table_of(*(proc(nr) for nr in range(3)))
    stopper = NoSignals(table)
    w = table.slots(0).by_nr[1]
    stopper.stop(w, 3, now=0.0, wait=5.0)
    assert table.live_count() == 2 and w not in table.live()
    assert table.slots(0).empty_below(3) == [1]
    assert table.deadlines == {w.pid: w}  # a SIGKILL deadline to watch


def test_above_finds_the_extra_and_forgets_the_top_once_empty():
    table = table_of(*(proc(nr) for nr in range(10)))
    slots = table.slots(0)
    assert [w.nr for w in slots.above(6)] == [6, 7, 8, 9]
    for w in slots.above(6):
        table.pop(w.pid)
    assert slots.above(6) == [] and slots.high == 5


def test_empty_below_agrees_with_a_scan_whatever_the_order():
    rng = random.Random(7)
    table = WorkerTable()
    live: dict[int, WorkerProc] = {}
    for _ in range(3000):
        wanted = rng.randint(0, 40)
        nr = rng.randint(0, 45)
        if nr in live and rng.random() < 0.6:
            table.pop(live.pop(nr).pid)
        elif nr not in live:
            live[nr] = proc(nr)
            table.add(live[nr])
        slots = table.slots(0)
        assert slots.empty_below(wanted) == [n for n in range(wanted) if n not in live]
        assert sorted(w.nr for w in slots.above(wanted)) == sorted(n for n in live if n >= wanted)


def test_spares_have_no_slot_but_count_as_live():
    table = table_of(proc(-1), proc(-1))
    assert table.live_count() == 2 and len(table.slots(0)) == 0


def test_booting_and_ready_counts_follow_mark_ready():
    a, b = proc(0, ready=False), proc(1, ready=False)
    table = table_of(a, b)
    assert set(table.booting) == {a.pid, b.pid} and table.ready_count() == 0
    table.mark_ready(a, 2.0)
    assert a.ready_at == 2.0 and set(table.booting) == {b.pid} and table.ready_count() == 1
    table.pop(b.pid)
    assert table.booting == {}


def test_set_generation_moves_a_live_worker_to_the_other_slots():
    w = proc(2, generation=1)
    table = table_of(w)
    table.set_generation(w, 2)
    assert 2 in table.slots(2) and table.live_not_of(2) == []
    assert table.live_not_of(3) == [w]


# -- plan_slots on the index -------------------------------------------------------


def test_the_plan_fills_the_missing_and_stops_the_extra():
    table = table_of(*(proc(nr) for nr in (0, 1, 3, 5)))
    plan = plan_slots(4, table.slots(0), [], False, never, 10.0)
    assert plan.spawn == [2] and [w.nr for w in plan.stop] == [5]


def test_the_plan_waits_for_a_slot_in_backoff():
    table = table_of(proc(0))
    plan = plan_slots(2, table.slots(0), [], False, lambda nr: 12.0 if nr == 1 else 0.0, 10.0)
    assert plan.spawn == [] and plan.next_at == 12.0


def test_a_reload_replaces_a_quarter_at_a_time_and_ends_when_all_are_ready():
    old = [proc(nr, generation=0) for nr in range(8)]
    table = table_of(*old)
    plan = plan_slots(8, table.slots(1), table.live_not_of(1), True, never, 10.0)
    assert plan.spawn == [0, 1] and plan.stop == []  # 8 / 4 at a time; none stopped yet
    new0 = proc(0, generation=1)
    table.add(new0)
    plan = plan_slots(8, table.slots(1), table.live_not_of(1), True, never, 10.0)
    assert [w.nr for w in plan.stop] == [0]  # its new worker is ready
    for w in old:
        table.pop(w.pid)
    for nr in range(1, 8):
        table.add(proc(nr, generation=1))
    plan = plan_slots(8, table.slots(1), [], True, never, 10.0)
    assert plan.reload_done and plan.spawn == []


# -- the stopper's deadlines -------------------------------------------------------


def test_the_stopper_looks_only_at_deadlines_and_kills_once():
    table = table_of(*(proc(nr) for nr in range(100)))
    stopper = NoSignals(table)
    w = table.slots(0).by_nr[7]
    stopper.stop(w, 3, now=0.0, wait=1.0)
    assert stopper.tick(0.5) == 1.0
    assert stopper.tick(1.0) is None and w.killed
    assert stopper.sent[-1] == (w.pid, 9) and table.deadlines == {}
    stopper.tick(2.0)
    assert sum(1 for _pid, sig in stopper.sent if sig == 9) == 1


# -- --timeout: a scan only when something can be due --------------------------------


class CountingTable(WorkerTable):
    def __init__(self) -> None:
        super().__init__()
        self.scans = 0

    def __iter__(self) -> Any:
        self.scans += 1
        return super().__iter__()


def test_timeouts_scan_only_when_a_task_can_be_due():
    table = CountingTable()
    for nr in range(50):
        table.add(proc(nr))
    timeouts = Timeouts(table, NoSignals(table), LOG, state(timeout=30.0))
    assert timeouts.tick(100.0) == 130.0  # all idle: due no sooner than now + timeout
    for t in (101.0, 110.0, 129.9):
        assert timeouts.tick(t) == 130.0
    assert table.scans == 1
    busy = table.slots(0).by_nr[3]
    busy.board.beat[0] = 120.0  # a task started meanwhile: due at 150, after 130
    assert timeouts.tick(130.0) == 150.0 and table.scans == 2
    assert timeouts.tick(150.0) is not None and busy.timed_out


def test_a_lower_timeout_after_a_reload_is_scanned_at_once():
    table = CountingTable()
    w = proc(0)
    w.board.beat[0] = 100.0
    table.add(w)
    view = state(timeout=30.0)
    timeouts = Timeouts(table, NoSignals(table), LOG, view)
    assert timeouts.tick(105.0) == 130.0
    view.release = Release(Settings(timeout=2.0), None, None, "app.py")  # HUP
    timeouts.tick(105.0)
    assert w.timed_out
