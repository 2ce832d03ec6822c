"""The adaptive count's decision, without processes: bounds, hysteresis, rate limit;
and what TTIN/TTOU, `ctl scale` and HUP do to the bounds."""

from __future__ import annotations

import logging

import pytest

from unicornish import config
from unicornish.config import build_settings
from unicornish.master.autoscale import (
    IDLE_LOOK,
    LOOK,
    STEP,
    Autoscaler,
    Memory,
    Policy,
    Seen,
    count_after_reload,
    decide,
    handover,
    parse_handover,
    policy_of,
)
from unicornish.master.children import WorkerTable
from unicornish.master.spawner import Release
from unicornish.master.state import State
from unicornish.protocol import MAX_WORKERS

P = Policy(low=2, high=8, idle=1, scale_down_after=30.0)


class Sim:
    """decide() run look after look, with the memory carried along."""

    def __init__(self, policy: Policy = P, wanted: int = 2) -> None:
        self.policy = policy
        self.wanted = wanted
        self.memory = Memory()
        self.changes: list[tuple[float, int]] = []

    def look(self, now: float, idle: int, busy: int, booting: int = 0) -> float:
        d = decide(self.policy, self.wanted, Seen(idle, busy, booting), self.memory, now)
        self.memory = d.memory
        if d.wanted != self.wanted:
            assert d.reason
            self.changes.append((now, d.wanted))
            self.wanted = d.wanted
        else:
            assert d.reason is None
        return d.wake


# -- bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize(("wanted", "expected"), [(0, 2), (1, 2), (9, 8), (100, 8)])
def test_a_count_outside_the_bounds_is_brought_back(wanted, expected):
    d = decide(P, wanted, Seen(idle=wanted), Memory(), 0.0)
    assert d.wanted == expected and d.reason == f"workers 2:8: {expected} workers wanted"


def test_never_above_max_however_busy():
    sim = Sim(wanted=7)
    now = 0.0
    for _ in range(50):
        sim.look(now, idle=0, busy=sim.wanted)
        now += STEP
    assert sim.wanted == 8


def test_never_below_min_however_idle():
    sim = Sim(wanted=3)
    now = 0.0
    for _ in range(200):
        sim.look(now, idle=sim.wanted, busy=0)
        now += 1.0
    assert sim.wanted == 2


def test_no_idle_workers_wanted_at_max_is_no_change():
    d = decide(P, 8, Seen(idle=0, busy=8), Memory(), 0.0)
    assert d.wanted == 8 and d.wake == IDLE_LOOK


# -- scaling up: how much, how fast -----------------------------------------------------


def test_fewer_than_k_idle_adds_the_missing_ones():
    policy = Policy(low=0, high=20, idle=3, scale_down_after=30.0)
    d = decide(policy, 4, Seen(idle=1, busy=3), Memory(), 10.0)
    assert d.wanted == 6
    assert d.reason == "scale up: 1 of 4 idle (want 3 idle): 6 workers wanted"


def test_booting_and_missing_workers_count_as_idle():
    """A slow boot must not make the master fork again and again for the same demand."""
    d = decide(P, 4, Seen(idle=0, busy=3, booting=1), Memory(), 0.0)
    assert d.wanted == 4
    d = decide(P, 4, Seen(idle=0, busy=3), Memory(), 0.0)  # the 4th not forked yet
    assert d.wanted == 4


def test_steps_are_at_least_STEP_apart():
    sim = Sim(wanted=2)
    assert sim.look(0.0, idle=0, busy=2) == STEP
    assert sim.wanted == 3
    # The new worker booted and was taken at once: still no idle one, but too soon.
    wake = sim.look(STEP / 2, idle=0, busy=3)
    assert sim.wanted == 3 and wake == STEP
    sim.look(STEP, idle=0, busy=3)
    assert sim.wanted > 3


def test_unmet_demand_doubles_the_step_and_met_demand_resets_it():
    sim = Sim(Policy(low=1, high=64, idle=1, scale_down_after=30.0), wanted=1)
    now = 0.0
    for _ in range(5):
        sim.look(now, idle=0, busy=sim.wanted)  # every step's workers taken at once
        now += STEP
    assert [w for _t, w in sim.changes] == [2, 4, 8, 16, 32]
    sim.look(now, idle=1, busy=31)  # enough now
    now += STEP
    sim.look(now, idle=0, busy=32)
    assert sim.changes[-1][1] == 33  # starts small again


def test_a_step_never_passes_max():
    sim = Sim(Policy(low=1, high=5, idle=1, scale_down_after=30.0), wanted=1)
    now = 0.0
    for _ in range(5):
        sim.look(now, idle=0, busy=sim.wanted)
        now += STEP
    assert [w for _t, w in sim.changes] == [2, 4, 5]


def test_fork_rate_is_bounded_by_the_step():
    """However the scoreboards change, changes are at least STEP apart."""
    sim = Sim(Policy(low=0, high=1000, idle=1, scale_down_after=30.0), wanted=0)
    now = 0.0
    while now < 2.0:
        sim.look(now, idle=0, busy=sim.wanted)
        now += 0.01
    times = [t for t, _w in sim.changes]
    assert all(b - a >= STEP - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert len(times) <= 2.0 / STEP + 1


# -- scaling down: hysteresis ---------------------------------------------------------------


def test_more_than_k_idle_retires_one_only_after_the_period():
    sim = Sim(wanted=5)
    wake = sim.look(0.0, idle=3, busy=2)
    assert sim.wanted == 5 and wake == LOOK  # looks again before the period ends
    sim.look(29.9, idle=3, busy=2)
    assert sim.wanted == 5
    sim.look(30.0, idle=3, busy=2)
    assert sim.changes == [(30.0, 4)]


def test_the_retire_line_says_why():
    d = decide(P, 5, Seen(idle=3, busy=2), Memory(excess_since=0.0), 30.0)
    assert d.reason == "scale down: 3 of 5 idle for 30s (want 1 idle): 4 workers wanted"


def test_the_timer_waits_for_the_deadline_when_nothing_is_busy():
    policy = Policy(low=1, high=8, idle=1, scale_down_after=0.5)
    d = decide(policy, 3, Seen(idle=3), Memory(), 10.0)
    assert d.wake == 10.5


def test_a_moment_with_k_idle_restarts_the_timer():
    sim = Sim(wanted=5)
    sim.look(0.0, idle=3, busy=2)
    sim.look(20.0, idle=1, busy=4)  # load came back for a moment
    sim.look(21.0, idle=3, busy=2)
    sim.look(40.0, idle=3, busy=2)
    assert sim.changes == []
    sim.look(51.0, idle=3, busy=2)
    assert sim.changes == [(51.0, 4)]


def test_at_most_one_retirement_per_period():
    sim = Sim(wanted=8)
    now = 0.0
    while now < 200.0:
        sim.look(now, idle=sim.wanted, busy=0)
        now += 0.2
    times = [t for t, _w in sim.changes]
    assert [w for _t, w in sim.changes] == [7, 6, 5, 4, 3, 2]
    assert all(b - a >= 30.0 - 0.2 - 1e-9 for a, b in zip(times, times[1:], strict=False))


def test_a_steady_load_near_the_threshold_does_not_swing_the_count():
    """3 tasks at a time, sometimes 2: 4 workers, K=1; the idle count flaps
    between 1 and 2 many times per period, so nothing is retired."""
    sim = Sim(Policy(low=1, high=8, idle=1, scale_down_after=1.0), wanted=4)
    now = 0.0
    for i in range(500):
        busy = 3 if i % 3 else 2
        sim.look(now, idle=4 - busy, busy=busy)
        now += LOOK
    assert sim.changes == []


def test_k_idle_exactly_is_stable():
    sim = Sim(wanted=5)
    for i in range(100):
        sim.look(i * 1.0, idle=1, busy=4)
    assert sim.changes == []


# -- the look interval ------------------------------------------------------------------------


def test_it_looks_often_while_work_flows_below_max():
    d = decide(P, 4, Seen(idle=2, busy=2), Memory(), 5.0)
    assert d.wake == 5.0 + LOOK


def test_it_looks_seldom_when_all_are_idle():
    d = decide(P, 2, Seen(idle=2), Memory(), 5.0)
    assert d.wake == 5.0 + IDLE_LOOK


# -- the duty: TTIN/TTOU, scale, HUP ----------------------------------------------------------


def settings_for(workers: str, **extra: object):
    values = {"app": "app.py", "workers": config.convert_option("workers", workers), **extra}
    settings, _notes = build_settings(values)
    return settings


def make_scaler(workers: str = "2:8") -> tuple[Autoscaler, State]:
    settings = settings_for(workers)
    state = State(Release(settings, None, None, "app.py"), settings.workers)
    scaler = Autoscaler(
        WorkerTable(), logging.getLogger("test"), state, lambda n: setattr(state, "wanted", n)
    )
    return scaler, state


def test_min_max_settings_start_with_k_idle_workers():
    s = settings_for("2:8")
    assert (s.workers_min, s.workers_max, s.workers) == (2, 8, 2)
    s = settings_for("0:8", idle_workers=3)
    assert (s.workers_min, s.workers_max, s.workers) == (0, 8, 3)
    s = settings_for("0:2", idle_workers=3)
    assert s.workers == 2


def test_a_fixed_count_never_wakes_the_master():
    scaler, _wanted = make_scaler("4")
    assert scaler.tick(0.0) is None and scaler.bounds() == (4, 4)
    scaler, _wanted = make_scaler("3:3")
    assert scaler.tick(0.0) is None and not scaler.adaptive


def test_ttin_and_ttou_move_both_bounds():
    scaler, _wanted = make_scaler("2:8")
    assert scaler.shift(1, 2) == 3 and scaler.bounds() == (3, 9)
    assert scaler.shift(-1, 3) == 2 and scaler.bounds() == (2, 8)
    scaler.shift(-1, 2)
    scaler.shift(-1, 1)
    assert scaler.bounds() == (0, 6)
    assert scaler.shift(-1, 0) == 0 and scaler.bounds() == (0, 5)


def test_ttin_stops_at_max_workers():
    scaler, _wanted = make_scaler(f"{MAX_WORKERS - 1}:{MAX_WORKERS}")
    assert scaler.shift(1, MAX_WORKERS) == MAX_WORKERS
    assert scaler.bounds() == (MAX_WORKERS, MAX_WORKERS)


def test_scale_n_fixes_the_count_until_hup():
    scaler, state = make_scaler("2:8")
    assert scaler.fix() is True
    state.wanted = 5
    assert scaler.bounds() == (5, 5) and scaler.tick(0.0) is None
    scaler.configure(settings_for("1:4"))  # HUP
    assert scaler.bounds() == (1, 4) and scaler.adaptive


@pytest.mark.parametrize(
    ("workers", "current", "expected"), [("2:8", 5, 5), ("2:8", 12, 8), ("2:8", 0, 2), ("3", 7, 3)]
)
def test_hup_keeps_the_count_between_the_new_bounds(workers, current, expected):
    assert count_after_reload(settings_for(workers), current) == expected


# -- the options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("2:8", (2, 8)), (" 0:0 ", (0, 0)), ("3:3", (3, 3)), ("0:10000", (0, MAX_WORKERS))],
)
def test_workers_takes_min_max(given, expected):
    assert config.convert_option("workers", given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("8:2", "MIN:MAX needs MIN <= MAX, got '8:2'"),
        ("1:10001", "must be at most 10000, got '1:10001'"),
        ("-1:3", "must be a whole number >= 0, 'auto' or MIN:MAX, got '-1:3'"),
        ("1:", "must be a whole number >= 0, 'auto' or MIN:MAX, got '1:'"),
        (":3", "must be a whole number >= 0, 'auto' or MIN:MAX, got ':3'"),
        ("1:2:3", "must be a whole number >= 0, 'auto' or MIN:MAX, got '1:2:3'"),
        ("a:b", "must be a whole number >= 0, 'auto' or MIN:MAX, got 'a:b'"),
        ("1.5:2", "must be a whole number >= 0, 'auto' or MIN:MAX, got '1.5:2'"),
    ],
)
def test_workers_refuses_bad_ranges(given, message):
    with pytest.raises(ValueError) as caught:
        config.convert_option("workers", given)
    assert str(caught.value) == message


@pytest.mark.parametrize(("given", "expected"), [("1", 1), (4, 4), ("10000", 10000)])
def test_idle_workers(given, expected):
    assert config.convert_option("idle_workers", given) == expected


@pytest.mark.parametrize("given", ["0", "-1", "x", "10001", True])
def test_idle_workers_refuses(given):
    with pytest.raises(ValueError):
        config.convert_option("idle_workers", given)


@pytest.mark.parametrize("given", ["0", "-1", "x", "nan"])
def test_scale_down_after_refuses(given):
    with pytest.raises(ValueError):
        config.convert_option("scale_down_after", given)


def test_adaptive_options_without_min_max_are_said_to_be_ignored():
    _settings, notes = build_settings(
        {"app": "app.py", "workers": 3, "idle_workers": 2, "scale_down_after": 5.0}
    )
    assert notes == [
        "--idle-workers is used only with --workers MIN:MAX; ignored",
        "--scale-down-after is used only with --workers MIN:MAX; ignored",
    ]


# -- USR2: the count handed to the new master ------------------------------------------


def test_handover_carries_what_changed_at_run_time():
    fixed = settings_for("2")
    assert handover(fixed, None, 2) is None  # as configured: the new master reads its own
    assert handover(fixed, None, 5) == "5"  # TTIN x3
    assert handover(fixed, None, 0) is None  # WINCH: a new master with none is never ready
    adaptive = settings_for("2:8")
    policy = policy_of(adaptive)
    assert handover(adaptive, policy, 6) == "6"  # the count the load brought it to
    assert policy is not None
    shifted = Policy(3, 9, policy.idle, policy.scale_down_after)
    assert handover(adaptive, shifted, 6) == "6,3:9"  # TTIN moved the bounds
    assert handover(adaptive, None, 4) == "4,4:4"  # `ctl scale 4` fixed the count


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "0",
        "-1",
        "5,",
        "5,1",
        "5,6:8",
        "5,1:4",
        "5,3:2",
        "10001",
        "5,1:10001",
        "1" * 40,
        "5,1:8:9",
        " 5",
    ],
)
def test_a_bad_handover_is_refused(text):
    with pytest.raises(ValueError):
        parse_handover(text)


def test_the_new_master_takes_the_handed_count_and_bounds():
    scaler, wanted = make_scaler("2:8")
    assert parse_handover("6,3:9") == (6, (3, 9))
    assert scaler.take_over(6, (3, 9), settings_for("2:8")) == 6
    assert scaler.bounds() == (3, 9) and scaler.adaptive
    scaler, wanted = make_scaler("2:8")
    assert scaler.take_over(12, None, settings_for("2:8")) == 8  # brought between the bounds
    scaler, wanted = make_scaler("2:8")
    assert scaler.take_over(4, (4, 4), settings_for("2:8")) == 4
    assert not scaler.adaptive  # `ctl scale 4` stays a fixed count until HUP
    scaler, wanted = make_scaler("2")
    assert scaler.take_over(5, None, settings_for("2")) == 5
    # A HUP reads the configuration again (its documented meaning).
    scaler, wanted = make_scaler("2:8")
    scaler.take_over(6, (3, 9), settings_for("2:8"))
    scaler.configure(settings_for("2:8"))
    assert scaler.bounds() == (2, 8)
