"""The master's loop notices when it woke much later than it meant to (SIGSTOP,
a suspended VM): the clock is faked, the selector is the real one."""

from __future__ import annotations

import pytest

from unicornish.master import eventloop
from unicornish.master.eventloop import OVERSLEEP, EventLoop


class Clock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_a_late_wake_up_is_a_suspension_and_says_how_late(monkeypatch: pytest.MonkeyPatch):
    loop = EventLoop()
    try:
        # Asked to sleep until 100.0 from 100.0 (no wait), woke 5 s later.
        monkeypatch.setattr(eventloop.time, "monotonic", Clock(100.0, 105.0))
        loop.wait(100.0)
        assert loop.suspended_at == 105.0
        assert loop.suspended_for == pytest.approx(5.0)
    finally:
        loop.selector.close()


def test_waking_on_time_is_no_suspension(monkeypatch: pytest.MonkeyPatch):
    loop = EventLoop()
    try:
        monkeypatch.setattr(eventloop.time, "monotonic", Clock(100.0, 100.0 + OVERSLEEP / 2))
        loop.wait(100.0)
        assert (loop.suspended_at, loop.suspended_for) == (0.0, 0.0)
    finally:
        loop.selector.close()
