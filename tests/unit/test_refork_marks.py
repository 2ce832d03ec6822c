"""The pure parts of reforking: the --refork-after list, each generation's
count, and the one task count a worker loop compares against."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unicornish.config import Settings, task_counts
from unicornish.master.spawner import Release
from unicornish.worker.process import next_mark


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("50", (50,)),
        ("50,500, 5000", (50, 500, 5000)),
        (100, (100,)),
        ([10, 20], (10, 20)),
        ("0", ()),
        (0, ()),
        (None, ()),
    ],
)
def test_refork_after_takes_counts_separated_by_commas(given, expected):
    assert task_counts(given) == expected


@pytest.mark.parametrize("bad", ["0,5", "abc", "5,,6", "-3", "", [], [1, 0], True])
def test_refork_after_refuses_anything_else(bad):
    with pytest.raises(ValueError, match="task counts > 0"):
        task_counts(bad)


def test_each_generation_uses_the_next_count_and_none_after_the_list():
    release = Release(Settings(app="a.py", refork_after=(10, 100)), None, None, "a.py")
    assert release.refork_at == 10
    assert replace(release, refork_index=1).refork_at == 100
    assert replace(release, refork_index=2).refork_at == 0
    assert Release(Settings(app="a.py"), None, None, "a.py").refork_at == 0


def test_the_loop_compares_against_the_nearest_mark():
    assert next_mark(0, 0, 0) == 0  # neither --max-tasks nor --refork-after
    assert next_mark(0, 100, 30) == 30
    assert next_mark(30, 100, 30) == 100  # warm reported: on to the recycle
    assert next_mark(0, 0, 30) == 30
    assert next_mark(40, 0, 30) == 0  # a spare's count may start past the mark
    assert next_mark(0, 20, 30) == 20  # recycled before it is warm
