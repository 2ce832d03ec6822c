"""Crash-loop backoff (unicornish/master/backoff.py) without processes: the clock is a
number the test passes in, and the jitter comes from a stand-in random source."""

from __future__ import annotations

import random
import signal

import pytest

from unicornish.master.backoff import (
    BASE_DELAY,
    MAX_DELAY,
    STABLE_AFTER,
    CrashBackoff,
    failed_on_its_own,
)

NOW = 1000.0


class FixedJitter(random.Random):
    """uniform() always gives `factor`, and remembers the bounds it was asked for."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__(0)
        self.factor = factor
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return self.factor


def boot_crashes(backoff: CrashBackoff, times: int, nr: int = 0) -> list[float]:
    """`times` deaths before ready, one second apart; the delay given for each."""
    return [
        backoff.record_exit(nr, NOW + i, ready_at=None, exit_code=3, signum=None)
        for i in range(times)
    ]


def test_the_documented_numbers():
    assert (BASE_DELAY, MAX_DELAY, STABLE_AFTER) == (0.1, 10.0, 2.0)


def test_first_crash_is_respawned_at_once():
    backoff = CrashBackoff(rng=FixedJitter())
    assert backoff.record_exit(0, NOW, ready_at=None, exit_code=3, signum=None) == 0.0
    assert backoff.crashes(0) == 1
    assert backoff.not_before(0) == NOW


def test_each_further_crash_waits_twice_as_long_up_to_the_cap():
    backoff = CrashBackoff(rng=FixedJitter())
    delays = boot_crashes(backoff, 11)
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])
    assert backoff.crashes(0) == 11
    assert backoff.not_before(0) == pytest.approx(NOW + 10 + 10.0)


def test_base_and_cap_are_the_ones_given():
    backoff = CrashBackoff(base=1.0, cap=3.0, rng=FixedJitter())
    assert boot_crashes(backoff, 5) == pytest.approx([0.0, 1.0, 2.0, 3.0, 3.0])


def test_jitter_is_twenty_percent_either_way_and_applies_to_the_capped_delay():
    high_rng = FixedJitter(1.2)
    low, high = CrashBackoff(rng=FixedJitter(0.8)), CrashBackoff(rng=high_rng)
    assert boot_crashes(low, 3) == pytest.approx([0.0, 0.08, 0.16])
    assert boot_crashes(high, 3) == pytest.approx([0.0, 0.12, 0.24])
    assert boot_crashes(low, 20)[-1] == pytest.approx(8.0)
    assert boot_crashes(high, 20)[-1] == pytest.approx(12.0)
    assert set(high_rng.asked) == {(0.8, 1.2)}


def test_real_jitter_stays_in_bounds_and_varies():
    backoff = CrashBackoff(rng=random.Random(1234))
    seen = []
    for nr in range(200):
        delays = boot_crashes(backoff, 3, nr=nr)
        assert delays[0] == 0.0
        assert 0.08 <= delays[1] <= 0.12
        assert 0.16 <= delays[2] <= 0.24
        seen.append(delays[1])
    assert len(set(seen)) > 100  # jitter, not one fixed value


def test_first_crash_is_not_jittered():
    rng = FixedJitter(1.2)
    backoff = CrashBackoff(rng=rng)
    assert backoff.record_exit(0, NOW, ready_at=None, exit_code=1, signum=None) == 0.0
    assert rng.asked == []


def test_a_worker_up_for_stable_after_clears_the_count():
    backoff = CrashBackoff(rng=FixedJitter())
    boot_crashes(backoff, 4)
    ready_at = NOW + 10
    died = ready_at + STABLE_AFTER
    # Even a crash signal: it stayed up long enough, so the slot starts over.
    assert backoff.record_exit(0, died, ready_at, exit_code=None, signum=signal.SIGSEGV) == 0.0
    assert backoff.crashes(0) == 0
    assert backoff.not_before(0) == died
    assert backoff.record_exit(0, died + 1, ready_at=None, exit_code=3, signum=None) == 0.0
    assert backoff.record_exit(0, died + 2, ready_at=None, exit_code=3, signum=None) == 0.1


def test_failing_on_its_own_just_before_stable_after_is_a_crash():
    backoff = CrashBackoff(rng=FixedJitter())
    boot_crashes(backoff, 2)
    ready_at = NOW + 10
    died = ready_at + STABLE_AFTER - 0.01
    assert backoff.record_exit(0, died, ready_at, exit_code=1, signum=None) == pytest.approx(0.2)
    assert backoff.crashes(0) == 3
    assert backoff.not_before(0) == pytest.approx(died + 0.2)


@pytest.mark.parametrize(
    ("exit_code", "signum"),
    [
        (None, signal.SIGSEGV),
        (None, signal.SIGABRT),
        (None, signal.SIGBUS),
        (None, signal.SIGFPE),
        (None, signal.SIGILL),
        (None, signal.SIGSYS),
        (1, None),
        (3, None),
        (255, None),
    ],
)
def test_what_counts_as_failing_on_its_own(exit_code, signum):
    assert failed_on_its_own(exit_code, signum)


@pytest.mark.parametrize(
    ("exit_code", "signum"),
    [
        (0, None),
        (None, None),
        (None, signal.SIGKILL),
        (None, signal.SIGTERM),
        (None, signal.SIGQUIT),
        (None, signal.SIGINT),
    ],
)
def test_what_does_not(exit_code, signum):
    assert not failed_on_its_own(exit_code, signum)


def test_outside_sigkill_after_ready_is_not_a_crash():
    backoff = CrashBackoff(rng=FixedJitter())
    boot_crashes(backoff, 3)
    ready_at = NOW + 10
    died = ready_at + 0.01  # well inside STABLE_AFTER
    assert backoff.record_exit(0, died, ready_at, exit_code=None, signum=signal.SIGKILL) == 0.0
    assert backoff.crashes(0) == 0
    assert backoff.not_before(0) == died
    # Nor the next: `kill -9` in a loop respawns at once every time.
    for i in range(5):
        ready_at = died + i
        assert backoff.record_exit(0, ready_at + 0.01, ready_at, None, signal.SIGKILL) == 0.0
    assert backoff.crashes(0) == 0


def test_sigkill_before_ready_is_a_crash():
    backoff = CrashBackoff(rng=FixedJitter())
    assert backoff.record_exit(0, NOW, None, None, signal.SIGKILL) == 0.0
    assert backoff.record_exit(0, NOW + 1, None, None, signal.SIGKILL) == 0.1
    assert backoff.crashes(0) == 2


def test_a_clean_exit_after_ready_is_not_a_crash():
    backoff = CrashBackoff(rng=FixedJitter())
    boot_crashes(backoff, 2)
    assert backoff.record_exit(0, NOW + 10.5, NOW + 10, exit_code=0, signum=None) == 0.0
    assert backoff.crashes(0) == 0


def test_slots_are_counted_apart_and_forget_drops_one():
    backoff = CrashBackoff(rng=FixedJitter())
    boot_crashes(backoff, 3, nr=0)
    assert backoff.crashes(1) == 0 and backoff.not_before(1) == 0.0
    assert boot_crashes(backoff, 2, nr=1) == pytest.approx([0.0, 0.1])
    assert backoff.crashes(0) == 3
    backoff.forget(0)
    assert backoff.crashes(0) == 0 and backoff.not_before(0) == 0.0
    assert backoff.crashes(1) == 2
    backoff.forget(7)  # never seen: nothing to do
