"""`status` figures read from /proc: cheap ones each time, USS within a time budget."""

from __future__ import annotations

import os
import time

from unicornish.metrics.procstats import StatsReader, process_stats


def test_the_cheap_figures_agree_with_psutil():
    pid = os.getpid()
    mine = StatsReader().read([pid], time.time())[pid]
    theirs = process_stats(pid)
    assert mine["rss"] > 0 and abs(mine["rss"] - theirs["rss"]) < 8 * 1024 * 1024
    assert mine["uss"] is not None and mine["uss"] > 0
    assert mine["cpu"] is not None and abs(mine["cpu"] - theirs["cpu"]) < 5.0


def test_uss_is_read_within_the_budget_and_kept_between_requests():
    pid = os.getpid()
    none_in_time = StatsReader(budget=-1.0)
    first = none_in_time.read([pid], time.time())[pid]
    assert first["rss"] > 0 and first["uss"] is None  # no time for smaps: not read yet
    reader = StatsReader()
    reader.read([pid], time.time())
    reader.budget = -1.0
    again = reader.read([pid], time.time())[pid]
    assert again["uss"] is not None  # the last value, when there is no time to read it again


def test_a_gone_process_has_no_figures():
    reader = StatsReader()
    figures = reader.read([2**22 + 12345], time.time())
    assert figures == {2**22 + 12345: {"rss": None, "uss": None, "cpu": None}}
