"""The task loop in-process: which turns are tasks (issue 23, item 7)."""

from __future__ import annotations

import os
import time
import types

import pytest

from unicornish.app import App
from unicornish.scoreboard import Scoreboard
from unicornish.worker import tasks
from unicornish.worker.process import Worker


def serve(plan: list[str], max_tasks: int | None = None, refork_at: int = 0) -> Scoreboard:
    """Run the loop over `plan`, one step per turn: "work" (a task), "nothing"
    (a wait in idle() that got nothing, then no_task()), "idle-then-work"."""
    board = Scoreboard()
    worker = Worker(0, os.getppid(), 0.0, [], board, "app", max_tasks, refork_at)
    steps = iter(plan)

    def task(w: Worker) -> None:
        step = next(steps, None)
        if step is None:
            w.stopping = True  # as QUIT does; and this turn did nothing either
            return w.no_task()
        if step == "work":
            time.sleep(0.002)
        elif step == "nothing":
            with w.idle():
                time.sleep(0.002)
            return w.no_task()
        elif step == "idle-then-work":
            with w.idle():
                time.sleep(0.002)
            time.sleep(0.002)
        return None

    app = App(spec="app", module=types.ModuleType("app"), entry=task)
    assert tasks.serve(worker, app, lambda: None) == 0
    return board


@pytest.fixture(autouse=True)
def _durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Scoreboard, "record_durations", True)


def test_a_turn_that_only_waited_is_not_counted_nor_timed():
    board = serve(["nothing", "work", "nothing", "nothing", "idle-then-work", "nothing"])
    try:
        figures = board.task_durations()
        assert board.task_count() == 2
        assert sum(figures[:-1]) == 2
        assert 0.004 <= figures[-1] < 0.5
    finally:
        board.close()


def test_empty_turns_bring_neither_max_tasks_nor_refork_after_closer():
    # Empty turns first: with done == 0 the loop must not see a mark reached.
    board = serve(["nothing"] * 5 + ["work", "nothing", "work", "work", "work"], max_tasks=3)
    try:
        assert board.task_count() == 3  # the limit, reached by work only
    finally:
        board.close()
    board = serve(["nothing"] * 5, max_tasks=1, refork_at=1)
    try:
        assert board.task_count() == 0
    finally:
        board.close()


@pytest.mark.parametrize("last", ["work", "nothing"])
def test_a_stop_asked_for_in_a_turn_ends_the_loop_right_after_it(last: str):
    # `stopping` set in a turn (as the QUIT handler does) is seen once the turn
    # is over, counted if it was a task: no further turn runs.
    board = Scoreboard()
    worker = Worker(0, os.getppid(), 0.0, [], board, "app")
    turns = [0]

    def task(w: Worker) -> None:
        turns[0] += 1
        if turns[0] == 3:
            w.stopping = True
            if last == "nothing":
                return w.no_task()
        return None

    try:
        app = App(spec="app", module=types.ModuleType("app"), entry=task)
        assert tasks.serve(worker, app, lambda: None) == 0
        assert turns[0] == 3
        assert board.task_count() == (3 if last == "work" else 2)
        assert not worker.alive
    finally:
        board.close()


def test_no_turn_at_all_when_stopping_before_the_loop():
    board = Scoreboard()
    worker = Worker(0, os.getppid(), 0.0, [], board, "app")
    worker.stopping = True
    called = []
    try:
        app = App(spec="app", module=types.ModuleType("app"), entry=called.append)
        assert tasks.serve(worker, app, lambda: None) == 0
        assert called == [] and board.task_count() == 0
    finally:
        board.close()
