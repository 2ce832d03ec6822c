"""Slot planning and the burst log: the pool's pure decisions."""

from __future__ import annotations

import logging
import random
import time

import pytest

from unicornish.master.children import Slots, WorkerProc
from unicornish.master.pool import ScaleLog, jittered_max_tasks, plan_slots
from unicornish.scoreboard import Scoreboard

NOW = 100.0


def proc(nr: int, generation: int = 1, ready: bool = True) -> WorkerProc:
    return WorkerProc(
        nr,
        pid=1000 + nr + 100 * generation,
        generation=generation,
        board=Scoreboard(),
        spawned_at=0.0,
        spawned_wall=0.0,
        ready_at=1.0 if ready else None,
    )


def never(nr: int) -> float:
    return 0.0


def slots(workers) -> Slots:
    found = Slots()
    for w in workers:
        found.put(w)
    return found


def plan(wanted, current=(), old=(), reloading=False, not_before=never):
    return plan_slots(wanted, slots(current), list(old), reloading, not_before, NOW)


def test_fills_every_missing_slot_in_order():
    result = plan(4, [proc(1)])
    assert result.spawn == [0, 2, 3]
    assert result.stop == [] and result.next_at is None


def test_nothing_to_do_when_every_slot_is_filled():
    result = plan(3, [proc(0), proc(1), proc(2)])
    assert result.spawn == [] and result.stop == [] and not result.reload_done


def test_workers_above_the_count_are_stopped():
    workers = [proc(0), proc(1), proc(2)]
    result = plan(1, workers)
    assert result.stop == workers[1:]


def test_backoff_holds_a_slot_and_says_when():
    result = plan(3, [proc(0)], not_before=lambda nr: NOW + 2 if nr == 1 else 0.0)
    assert result.spawn == [2]
    assert result.next_at == NOW + 2


def test_reload_replaces_a_quarter_at_a_time_and_waits_for_ready():
    old = [proc(nr, generation=0) for nr in range(8)]
    first = plan(8, [], old, reloading=True)
    assert first.spawn == [0, 1]  # ceil(8 / 4)
    assert first.stop == []  # nothing proven yet
    assert first.next_at is None  # held-back slots wait for a ready report, not a timer
    booting = [proc(0, ready=False), proc(1, ready=False)]
    assert plan(8, booting, old, reloading=True).spawn == []
    one_ready = [proc(0), proc(1, ready=False)]
    second = plan(8, one_ready, old, reloading=True)
    assert second.spawn == [2]
    assert second.stop == [old[0]]  # its replacement is ready


def test_no_old_worker_stops_before_the_new_app_proved_itself():
    old = [proc(nr, generation=0) for nr in range(3)]
    result = plan(1, [proc(0, ready=False)], old, reloading=True)
    assert result.stop == []
    proven = plan(1, [proc(0)], old, reloading=True)
    assert sorted(w.nr for w in proven.stop) == [0, 1, 2]


def test_reload_is_done_when_every_slot_runs_the_new_release():
    assert plan(2, [proc(0), proc(1)], [], reloading=True).reload_done
    assert not plan(2, [proc(0), proc(1, ready=False)], [], reloading=True).reload_done
    assert not plan(2, [proc(0), proc(1)], [proc(1, generation=0)], reloading=True).reload_done
    assert not plan(2, [proc(0), proc(1)], [], reloading=False).reload_done


def test_zero_wanted_plans_nothing():
    result = plan(0, [], [])
    assert result.spawn == [] and result.next_at is None


def test_max_tasks_jitter_stays_within_ten_percent():
    rng = random.Random(1)
    values = {jittered_max_tasks(100, rng) for _ in range(500)}
    assert min(values) == 100 and max(values) == 110
    assert jittered_max_tasks(None, rng) is None
    assert jittered_max_tasks(1, rng) == 1


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def scale_log():
    logger = logging.getLogger("test-scale-log")
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield ScaleLog(logger), handler.lines
    logger.removeHandler(handler)


def test_a_burst_is_logged_twice_at_most(scale_log):
    log, lines = scale_log
    for i in range(200):
        log.changed(10.0 + i * 0.0001, "TTIN", 1, 2 + i)
    assert lines == ["TTIN: 2 workers wanted"]
    assert log.tick(10.05) == pytest.approx(10.0199 + 0.1)
    assert log.tick(10.2) is None
    assert lines[1] == "TTIN: 201 workers wanted (a burst: TTIN x199 more)"
    assert log.tick(11.0) is None and len(lines) == 2


def test_changes_apart_are_logged_each(scale_log):
    log, lines = scale_log
    log.changed(1.0, "TTOU", 1, 3)
    log.changed(2.0, "TTOU", 1, 2)
    log.changed(3.0, "TTOU", 3, 0)
    assert lines == [
        "TTOU: 3 workers wanted",
        "TTOU: 2 workers wanted",
        "TTOU: 0 workers wanted (3 signals)",
    ]


def test_one_worker_per_slot_the_ready_one_stays():
    ready, booting = proc(0), proc(0, generation=1, ready=False)
    booting.generation = ready.generation
    booting.spawned_at = 5.0
    result = plan(1, [booting, ready])
    assert result.stop == [booting]
    assert result.spawn == []


def test_another_change_says_what_a_burst_did_first(scale_log):
    """The log must read in the order the count changed: a reload or WINCH after a
    burst comes after the burst's summary, never before it."""
    log, lines = scale_log
    log.changed(1.0, "TTIN", 1, 5)
    log.changed(1.01, "TTIN", 1, 6)
    log.flush()  # what Pool.scale does before any change that is not TTIN/TTOU
    log.changed(1.02, "WINCH", 1, 0)
    assert lines == [
        "TTIN: 5 workers wanted",
        "TTIN: 6 workers wanted (a burst: TTIN x1 more)",
        "WINCH: 0 workers wanted",
    ]
    assert log.tick(5.0) is None


class OutOfProcesses:
    """A spawner whose fork always fails (EAGAIN under a pids limit)."""

    def spawn(self, nr, release, max_tasks, assign_fd=None, close_fd=None):
        return None


def test_a_failed_fork_is_retried_at_its_backoff_deadline():
    """The pool must wake for the retry of a failed fork, not sleep until --poll:
    with every other worker ready, nothing else would wake the master."""
    from unicornish.config import Settings
    from unicornish.master.children import Children, Stopper
    from unicornish.master.pool import Pool
    from unicornish.master.spawner import Release
    from unicornish.master.state import State

    children = Children()
    state = State(Release(Settings(), None, None, "app.py"), 2)
    logger = logging.getLogger("test-pool")
    pool = Pool(children, OutOfProcesses(), Stopper(logger, children), logger, state)  # type: ignore[arg-type]
    now = time.monotonic()  # the backoff stamps a failure with the clock
    first = pool.tick(now)  # the first failure of a slot is retried at once
    assert first is not None and first <= time.monotonic()
    second = pool.tick(time.monotonic())  # then backed off: 0.1 s, with jitter
    assert second is not None and time.monotonic() < second <= time.monotonic() + 0.2


def test_a_refork_replaces_one_worker_at_a_time():
    old = [proc(nr, generation=0) for nr in range(8)]
    first = plan_slots(8, slots([]), old, True, never, NOW, batch=1)
    assert first.spawn == [0]
    booting = plan_slots(8, slots([proc(0, ready=False)]), old, True, never, NOW, batch=1)
    assert booting.spawn == []
    ready = plan_slots(8, slots([proc(0)]), old, True, never, NOW, batch=1)
    assert ready.spawn == [1] and ready.stop == [old[0]]
