"""The exposition writer: escaping, the two formats' naming rules, histograms,
values as Go writes them, series that cannot be written; checked against
prometheus_client (the test oracle: its parsers, its float format) and, where
installed, promtool."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from unicornish.metrics.exposition import (
    COUNTER,
    EOF,
    GAUGE,
    HISTOGRAM,
    INFO,
    Family,
    escape_help,
    escape_label_value,
    number,
)
from unicornish.metrics.exposition import write as write_bytes
from unicornish.metrics.families import Exposition, Tallies


def write(families: list[Family], openmetrics: bool) -> str:
    written = write_bytes(families, openmetrics)
    assert (written.dropped, written.example) == (0, "")
    return written.body.decode()


NASTY = 'a\\b"c\nd'  # a backslash, a quote, a newline


def families() -> list[Family]:
    info = Family("demo_build", INFO, "The version")
    info.add(1, ("version",), ("1.2.3",))
    gauge = Family("demo_things", GAUGE, 'Help with a \\ backslash,\na newline and "quotes"')
    gauge.add(3, ("where",), (NASTY,))
    gauge.add(1777664, ("where",), ("plain",))
    counter = Family("demo_jobs", COUNTER, "Jobs done")
    counter.add(5, ("kind",), ("a",))
    counter.add(0, ("kind",), ("b",))
    histogram = Family("demo_seconds", HISTOGRAM, "Task time")
    histogram.add_histogram((0.001, 1.0), [2.0, 3.0, 1.0], 7.25)
    return [info, gauge, counter, histogram]


def test_label_values_escape_backslash_quote_and_newline():
    assert escape_label_value(NASTY) == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain") == "plain"


def test_help_escapes_quotes_in_openmetrics_only():
    assert escape_help('x\\y\n"z"', openmetrics=False) == 'x\\\\y\\n"z"'
    assert escape_help('x\\y\n"z"', openmetrics=True) == 'x\\\\y\\n\\"z\\"'


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "0.0"),
        (2, "2.0"),
        (0.5, "0.5"),
        (5e-06, "5e-06"),
        (999999, "999999.0"),
        (1000000, "1e+06"),
        (1777664, "1.777664e+06"),
        (1.7961808375350053e09, "1.7961808375350053e+09"),
        (12345678901.5, "1.23456789015e+10"),
        (-2500000.0, "-2.5e+06"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_values_are_written_as_go_writes_a_float(value: float, text: str):
    assert number(value) == text


def test_values_are_written_as_prometheus_client_writes_them():
    utils = pytest.importorskip("prometheus_client.utils")
    import random

    draw = random.Random(7)
    values = [draw.uniform(0, 1e12) for _ in range(2000)]
    values += [draw.randrange(0, 2**60) for _ in range(2000)]
    values += [10.0**k for k in range(-12, 30)] + [2**53, 2**53 + 1, 0.1 + 0.2]
    for value in values:
        assert number(value) == utils.floatToGoString(value), value
        # Below -1e6 prometheus_client keeps Python's digits (-2500000.0) where Go
        # (and we) write -2.5e+06: the same float to every parser.
        assert float(number(-value)) == float(utils.floatToGoString(-value)) == float(-value)


def test_the_text_format_names_counters_and_infos_as_prometheus_client_does():
    text = write(families(), openmetrics=False)
    assert "# TYPE demo_jobs_total counter\n" in text
    assert 'demo_jobs_total{kind="a"} 5.0\n' in text
    assert "# TYPE demo_build_info gauge\n" in text
    assert 'demo_build_info{version="1.2.3"} 1.0\n' in text
    assert 'demo_things{where="a\\\\b\\"c\\nd"} 3.0\n' in text
    assert 'demo_things{where="plain"} 1.777664e+06\n' in text
    assert "_created" not in text
    assert EOF not in text


def test_openmetrics_names_families_without_suffixes():
    text = write(families(), openmetrics=True)
    assert "# TYPE demo_jobs counter\n" in text
    assert "# TYPE demo_build info\n" in text
    assert '# HELP demo_things Help with a \\\\ backslash,\\na newline and \\"quotes\\"\n' in text


def test_a_histogram_is_cumulative_and_ends_with_inf_count_and_sum():
    text = write(families()[3:], openmetrics=False)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        'demo_seconds_bucket{le="0.001"} 2.0',
        'demo_seconds_bucket{le="1.0"} 5.0',
        'demo_seconds_bucket{le="+Inf"} 6.0',
        "demo_seconds_count 6.0",
        "demo_seconds_sum 7.25",
    ]


def test_prometheus_clients_parsers_read_back_both_formats():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    from prometheus_client.parser import text_string_to_metric_families as text_parse

    for parse, openmetrics in ((text_parse, False), (om_parse, True)):
        body = write(families(), openmetrics) + (EOF if openmetrics else "")
        parsed = {f.name: f for f in parse(body)}
        things = {s.labels["where"]: s.value for s in parsed["demo_things"].samples}
        assert things == {NASTY: 3.0, "plain": 1777664.0}
        jobs = parsed["demo_jobs"]
        assert jobs.type == "counter"
        assert {s.labels["kind"]: s.value for s in jobs.samples} == {"a": 5.0, "b": 0.0}
        assert parsed["demo_seconds"].type == "histogram"
    assert om_parse(write(families(), True) + EOF)  # the parser insists on # EOF


UNDECODABLE = os.fsdecode(b"report-\xff.csv")  # a lone surrogate: no UTF-8 for it


def test_a_series_that_cannot_be_written_is_left_out_not_the_scrape():
    good, bad_help = families()[1:3]
    good.add(2, ("where",), (UNDECODABLE,))
    bad_help.help = f"Jobs in {UNDECODABLE}"
    histogram = Family("demo_more_seconds", HISTOGRAM, "Task time")
    histogram.add_histogram((1.0,), [1.0, 0.0], 0.5, ("file",), (UNDECODABLE,))
    histogram.add_histogram((1.0,), [2.0, 0.0], 1.5, ("file",), ("fine",))
    for openmetrics in (False, True):
        written = write_bytes([good, bad_help, histogram], openmetrics)
        # One series of demo_things, demo_jobs (2 series) for its help, one histogram.
        assert (written.dropped, written.example) == (4, "demo_things")
        text = written.body.decode()
        assert "report-" not in text and "demo_jobs" not in text
        assert 'demo_things{where="plain"} 1.777664e+06\n' in text
        assert 'demo_more_seconds_count{file="fine"} 2.0\n' in text


def test_the_scrape_counts_and_logs_what_it_left_out(caplog):
    class Listener:
        def own_families(self) -> list[Family]:
            family = Family("demo_listeners", GAUGE, "Listeners")
            family.add(1, ("listener",), (f"unix:/run/{UNDECODABLE}",))
            family.add(1, ("listener",), ("127.0.0.1:80",))
            return [family]

    exposition = Exposition([Listener()])
    for _ in range(3):
        body, content_type = exposition.render()
    text = body.decode()
    assert 'demo_listeners{listener="127.0.0.1:80"} 1.0\n' in text
    assert 'unicornish_metrics_dropped_series_total{reason="unwritable"} 3.0\n' in text
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "metrics: 1 series left out of a scrape: their text cannot be written "
        "(not valid UTF-8), in demo_listeners first"
    ]  # once a minute at most
    body, content_type = exposition.render("application/openmetrics-text; version=1.0.0")
    assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert b'unicornish_metrics_dropped_series_total{reason="unwritable"} 4.0\n' in body
    assert body.endswith(b"\n# EOF\n")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_text_format():
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=write(families(), openmetrics=False),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the histogram's totals in the master -------------------------------------------------


class _Board:
    def __init__(self, durations: list[float]) -> None:
        self.durations = durations

    def task_durations(self) -> list[float]:
        return self.durations


class _Proc:
    def __init__(self, nr: int, durations: list[float]) -> None:
        self.nr = nr
        self.board = _Board(durations)


def test_task_durations_never_go_down_when_a_worker_is_reaped():
    tallies = Tallies()
    width = len(tallies.reaped_durations)
    one = [1.0] + [0.0] * (width - 2) + [0.5]  # one fast task, 0.5 s in all
    assert tallies.task_durations([_Proc(0, one), _Proc(-1, one)]) == one  # type: ignore[list-item]
    tallies.worker_reaped(0, 1, one)
    both = tallies.task_durations([_Proc(0, one)])  # type: ignore[list-item]
    assert both[0] == 2.0 and both[-1] == 1.0
    tallies.worker_reaped(-1, 0, one)  # a spare ran no task: nothing is added
    assert tallies.task_durations([]) == one


# -- the worker's side: what its loop records ---------------------------------------------


def test_the_task_loop_records_each_task_and_leaves_idle_waits_out(
    monkeypatch: pytest.MonkeyPatch,
):
    import os
    import time
    import types

    from unicornish.app import App
    from unicornish.protocol import TASK_DURATION_BUCKETS
    from unicornish.scoreboard import Scoreboard
    from unicornish.worker import tasks
    from unicornish.worker.process import Worker

    # As a master with --metrics or --control sets it before forking.
    monkeypatch.setattr(Scoreboard, "record_durations", True)
    board = Scoreboard()
    worker = Worker(0, os.getppid(), 0.0, [], board, "app")
    calls = [0]
    took = {"idle": 0.0, "work": 0.0}  # as long as each sleep really lasted

    def task(w: Worker) -> None:
        calls[0] += 1
        begun = time.monotonic()
        if calls[0] == 1:
            with w.idle():
                time.sleep(0.06)  # waiting for work: not part of the task
            took["idle"] = time.monotonic() - begun
        elif calls[0] == 2:
            time.sleep(0.06)  # the work itself
            took["work"] = time.monotonic() - begun
        else:
            w.stopping = True

    try:
        app = App(spec="app", module=types.ModuleType("app"), entry=task)
        assert tasks.serve(worker, app, lambda: None) == 0
        figures = board.task_durations()
        counts, total = figures[:-1], figures[-1]
        assert sum(counts) == board.task_count() == 3
        slow_from = TASK_DURATION_BUCKETS.index(0.05) + 1  # the (0.05, 0.1] bucket on
        assert sum(counts[slow_from:]) == 1  # the task that worked 60 ms, not the idle one
        # The work is in the sum, the idle wait is not: bounds from what the
        # sleeps really took, so a busy machine's late wake-up moves both.
        assert took["work"] <= total < took["work"] + took["idle"]
    finally:
        board.close()


def test_without_a_reader_the_task_loop_records_no_durations():
    import os
    import types

    from unicornish.app import App
    from unicornish.scoreboard import Scoreboard
    from unicornish.worker import tasks
    from unicornish.worker.process import Worker

    assert Scoreboard.record_durations is False  # until a master with a reader says so
    board = Scoreboard()
    worker = Worker(0, os.getppid(), 0.0, [], board, "app")
    calls = [0]

    def task(w: Worker) -> None:
        calls[0] += 1
        if calls[0] == 3:
            w.stopping = True

    try:
        app = App(spec="app", module=types.ModuleType("app"), entry=task)
        assert tasks.serve(worker, app, lambda: None) == 0
        assert board.task_count() == 3
        assert board.task_durations() == [0.0] * len(board.task_durations())
    finally:
        board.close()
