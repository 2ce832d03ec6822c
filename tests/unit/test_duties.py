"""Duties return when they next need the master, from the same code that acts."""

from __future__ import annotations

import logging
from typing import Any

from unicornish.config import Settings
from unicornish.host.log import ErrorLog
from unicornish.master.children import Children, Stopper, WorkerProc, WorkerTable
from unicornish.master.recycle import GiveUp
from unicornish.master.spawner import Release
from unicornish.master.state import State
from unicornish.master.timeouts import Timeouts
from unicornish.scoreboard import Scoreboard

LOG = logging.getLogger("test-duties")


def worker(nr: int, ready_at: float | None) -> WorkerProc:
    return WorkerProc(nr, 5000 + nr, 0, Scoreboard(), 0.0, 0.0, ready_at=ready_at)


def state(wanted: int = 2, grace_from: float = 0.0, **settings: Any) -> State:
    release = Release(Settings(**settings), None, None, "app.py")
    return State(release, wanted, grace_from=grace_from)


class GiveUpCase:
    def __init__(self, limit: float | None = 10.0, wanted: int = 2) -> None:
        self.table = WorkerTable()
        self.gave_up = 0
        view = state(wanted, give_up_after=limit)
        self.duty = GiveUp(self.table, LOG, view, self.give_up, now=0.0)

    def give_up(self) -> None:
        self.gave_up += 1


def test_give_up_sleeps_until_its_deadline_and_acts_then():
    case = GiveUpCase(limit=10.0)
    assert case.duty.tick(1.0) == 11.0  # starts watching: the clock starts now
    assert case.duty.tick(5.0) == 11.0
    assert case.gave_up == 0
    assert case.duty.tick(11.0) == 11.0  # acted: the other duties must see it at once
    assert case.gave_up == 1


def test_give_up_waits_for_a_ready_worker_to_prove_itself():
    case = GiveUpCase(limit=10.0)
    case.duty.tick(0.0)
    case.table.add(worker(0, ready_at=9.5))
    assert case.duty.tick(10.0) == 9.5 + 2.0  # STABLE_AFTER
    assert case.duty.tick(11.5) is None  # proven: nothing to watch until a death
    assert case.gave_up == 0


def test_give_up_is_off_without_a_limit_or_without_wanted_workers():
    assert GiveUpCase(limit=None).duty.tick(100.0) is None
    assert GiveUpCase(wanted=0).duty.tick(100.0) is None


def test_a_proven_workers_death_restarts_the_clock():
    case = GiveUpCase(limit=10.0)
    case.duty.tick(0.0)
    proven = worker(0, ready_at=1.0)
    case.duty.on_reaped(proven, 50.0)
    assert case.duty.tick(51.0) == 60.0


def test_timeouts_wake_at_the_earliest_task_deadline():
    table = WorkerTable()
    busy, idle = worker(0, 1.0), worker(1, 1.0)
    busy.board.beat[0] = 95.0
    table.add(busy)
    table.add(idle)
    stopper = Stopper(LOG, Children(table))
    duty = Timeouts(table, stopper, LOG, state(timeout=30.0))
    # The busy one's task ends its time at 125; the idle one is looked at within 30 s.
    assert duty.tick(100.0) == 125.0
    assert Timeouts(table, stopper, LOG, state(timeout=None)).tick(1) is None


def test_after_a_suspension_busy_workers_get_a_fresh_timeout():
    table = WorkerTable()
    busy = worker(0, 1.0)
    busy.board.beat[0] = 10.0
    table.add(busy)
    duty = Timeouts(table, Stopper(LOG, Children(table)), LOG, state(grace_from=90.0, timeout=30.0))
    assert duty.tick(100.0) == 120.0
    assert not busy.timed_out


def test_stop_deadlines_wake_at_the_earliest_kill():
    table = WorkerTable()
    a, b = worker(0, 1.0), worker(1, 1.0)
    table.add(a)
    table.add(b)
    stopper = Stopper(LOG, Children(table))
    assert stopper.tick(0.0) is None
    stopper.kill_after(a, 40.0)
    stopper.kill_after(b, 30.0)
    stopper.kill_after(b, 35.0)  # a later deadline never postpones an earlier one
    assert stopper.tick(10.0) == 30.0


def test_error_log_is_rate_limited(caplog):
    errors = ErrorLog(LOG, every=10.0)
    with caplog.at_level(logging.ERROR, logger="test-duties"):
        for _ in range(5):
            try:
                raise OverflowError("timeout is too large")
            except OverflowError:
                errors.failed("sleep")
    assert len(caplog.records) == 1
    assert "master loop error in sleep" in caplog.records[0].getMessage()
