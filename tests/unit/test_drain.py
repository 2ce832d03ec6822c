"""The drain duty (unicornish/master/drain.py) and the readiness rule (readiness.not_ready_reason)
without processes: the clock is a number the test passes in."""

from __future__ import annotations

import logging

import pytest

from unicornish.master.drain import Drain, describe_plan
from unicornish.master.readiness import not_ready_reason

NOW = 1000.0


class Finished:
    """Stands in for the master's stop_workers: remembers each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, why: str) -> None:
        self.calls.append(why)


def make() -> tuple[Drain, Finished]:
    finished = Finished()
    return Drain(logging.getLogger("test"), finished), finished


def test_idle_drain_needs_no_wake_up():
    drain, finished = make()
    assert drain.tick(NOW) is None
    assert not drain.active and finished.calls == []


def test_a_drain_of_zero_begins_nothing():
    drain, finished = make()
    assert drain.start(NOW, 0) is False
    assert not drain.active and drain.tick(NOW) is None and finished.calls == []


def test_the_tick_returns_the_drains_end_until_it_comes():
    drain, finished = make()
    assert drain.start(NOW, 5) is True
    assert drain.active
    # Every turn before the end asks to be woken at the end, no earlier: no polling.
    for now in (NOW, NOW + 0.001, NOW + 2.5, NOW + 4.999):
        assert drain.tick(now) == NOW + 5
        assert drain.remaining(now) == pytest.approx(NOW + 5 - now)
    assert finished.calls == []


def test_at_its_end_the_graceful_stop_starts_once_and_the_others_see_it_at_once():
    drain, finished = make()
    drain.start(NOW, 5)
    # A late wake-up (a busy host) still ends it, and says how long it really took.
    assert drain.tick(NOW + 5.25) == NOW + 5.25
    assert finished.calls == ["drain over after 5.2s"]
    assert not drain.active
    assert drain.tick(NOW + 6) is None
    assert finished.calls == ["drain over after 5.2s"]


def test_a_second_start_keeps_the_first_end():
    drain, _ = make()
    drain.start(NOW, 5)
    assert drain.start(NOW + 1, 5) is False
    assert drain.tick(NOW + 1) == NOW + 5


def test_cancel_ends_it_without_the_callback():
    drain, finished = make()
    assert drain.cancel() is False
    drain.start(NOW, 5)
    assert drain.cancel() is True
    assert drain.tick(NOW + 10) is None
    assert finished.calls == [] and drain.remaining(NOW) == 0.0


def test_the_plan_line_states_the_whole_budget():
    assert describe_plan(5, 30) == "stop: drain 5s, then graceful up to 30s (at most 35s in all)"
    assert describe_plan(0.5, 2) == "stop: drain 0.5s, then graceful up to 2s (at most 2.5s in all)"


# -- readiness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stopping", "reloading", "booted", "wanted", "ready", "expected"),
    [
        (None, False, True, 4, 4, None),
        (None, False, False, 4, 4, None),  # all ready: the tick that records it comes later
        (None, False, False, 4, 2, "booting: 2 of 4 ready"),
        (None, False, False, 1, 0, "booting: 0 of 1 ready"),
        (None, True, True, 4, 3, "reloading: 3 of 4 ready"),
        (None, True, True, 4, 4, None),  # a reload that keeps every slot served
        (None, False, True, 4, 3, None),  # one crashed of four: three still serve
        (None, False, True, 4, 0, "no worker ready: 0 of 4"),
        (None, False, True, 0, 0, "no workers wanted"),  # WINCH, scale 0
        ("draining", False, True, 4, 4, "draining"),
        ("graceful", False, True, 4, 4, "stopping"),
        ("quick", False, True, 4, 0, "stopping"),
        ("draining", True, False, 4, 0, "draining"),  # stopping says it before anything else
    ],
)
def test_not_ready_reason(stopping, reloading, booted, wanted, ready, expected):
    assert not_ready_reason(stopping, reloading, booted, wanted, ready) == expected
