"""deaths.py without processes: each cause, the OOM rule against a count that moves
(a fake reader, then cgroup v1 and v2 fixture trees), and the collector's counts."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from unicornish.host.cgroups import FileReader
from unicornish.master.children import WorkerProc
from unicornish.master.deaths import CAUSES, Deaths, cgroup_oom_reader, classify
from unicornish.metrics.exposition import write
from unicornish.scoreboard import IDLE, Scoreboard

NOW = 1000.0
KILL, SEGV, TERM = signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM


@pytest.fixture
def proc() -> Iterator[Callable[..., WorkerProc]]:
    boards: list[Scoreboard] = []

    def make(tasks: int = 0, **fields: object) -> WorkerProc:
        board = Scoreboard()
        boards.append(board)
        board.tasks[0] = tasks
        w = WorkerProc(0, pid=4242, generation=0, board=board, spawned_at=NOW - 100, spawned_wall=0)
        w.ready_at = NOW - 50  # a worker up for a while, unless a case says otherwise
        for name, value in fields.items():
            setattr(w, name, value)
        if w.ready_at is not None:
            board.state[0] = IDLE
        return w

    yield make
    for board in boards:
        board.close()


@pytest.mark.parametrize(
    "fields, code, signum, oom, cause",
    [
        ({}, 0, None, False, "exit"),  # e.g. sys.exit(0) in a task, long after ready
        ({"stop_signal": "SIGQUIT"}, 0, None, False, "exit"),
        ({"stop_signal": "SIGQUIT"}, 1, None, False, "exit"),  # asked to stop
        ({}, 7, None, False, "exit"),  # sys.exit(7) long after ready
        ({}, None, KILL, False, "signal"),  # kill -9 from outside
        ({"stop_signal": "SIGQUIT", "killed": True}, None, KILL, False, "signal"),
        ({}, None, TERM, False, "signal"),
        ({"timed_out": True, "killed": True}, None, KILL, False, "timeout"),
        ({}, None, KILL, True, "oom"),
        ({"ready_at": None}, None, KILL, True, "oom"),  # even before ready
        ({"recycled": "max-memory", "stop_signal": "SIGQUIT"}, 0, None, False, "max_memory"),
        ({"max_tasks": 10, "tasks": 10}, 0, None, False, "max_tasks"),
        ({"max_tasks": 10, "tasks": 9}, 0, None, False, "exit"),
        ({}, None, SEGV, False, "crash"),  # a crash signal, however long it was up
        ({"ready_at": None}, 3, None, False, "crash"),  # could not boot
        ({"ready_at": None}, None, KILL, False, "crash"),  # killed before ready
        ({"ready_at": NOW - 0.5}, 1, None, False, "crash"),  # died soon after ready
        ({"ready_at": NOW - 0.5}, 0, None, False, "crash"),  # an unasked exit 0, as backoff
        ({"ready_at": NOW - 0.5}, None, KILL, False, "signal"),  # outside kill -9: no crash
        ({"ready_at": None, "stop_signal": "SIGQUIT"}, 0, None, False, "exit"),
    ],
)
def test_each_cause(proc, fields, code, signum, oom, cause):
    tasks = fields.pop("tasks", 0)
    w = proc(tasks=tasks, **fields)
    if "ready_at" in fields and fields["ready_at"] is None:
        w.board.state[0] = 0  # still booting
    assert classify(w, code, signum, tasks, NOW, oom) == cause


def test_a_ready_worker_whose_report_was_not_read_counts_from_now(proc):
    w = proc(ready_at=None)
    w.board.state[0] = IDLE  # past booting on its scoreboard
    assert classify(w, 1, None, 0, NOW, False) == "crash"


def counts(values: list[int | None]) -> Callable[[], int | None]:
    """An OOM count that reads as each value in turn (the last one repeats)."""
    queue = list(values)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def test_a_sigkill_of_nobody_while_the_count_rose_is_an_oom_kill(proc):
    deaths = Deaths(counts([0, 1, 1]))
    assert deaths.record(proc(), None, KILL, NOW) == "oom"
    assert deaths.record(proc(), None, KILL, NOW) == "signal"  # no new kill: from outside
    assert deaths.counts["oom"] == 1 and deaths.counts["signal"] == 1


def test_our_own_sigkill_is_never_an_oom_kill(proc):
    deaths = Deaths(counts([0, 1, 1]))
    assert deaths.record(proc(timed_out=True, killed=True), None, KILL, NOW) == "timeout"
    graceful = proc(stop_signal="SIGQUIT", killed=True)
    # The kill that raised the count is still unexplained: the next SIGKILL of nobody.
    assert deaths.record(graceful, None, KILL, NOW) == "signal"
    assert deaths.record(proc(), None, KILL, NOW) == "oom"


def test_each_oom_kill_explains_one_death(proc):
    deaths = Deaths(counts([5, 7, 7, 7]))
    causes = [deaths.record(proc(), None, KILL, NOW) for _ in range(3)]
    assert causes == ["oom", "oom", "signal"]


def test_a_spare_or_other_child_takes_its_oom_kill_too(proc):
    deaths = Deaths(counts([0, 1, 1]))
    assert deaths.out_of_memory(KILL, killed_by_us=False)  # e.g. a spare
    assert deaths.record(proc(), None, KILL, NOW) == "signal"


def test_no_count_anywhere_means_no_oom_and_other_signals_do_not_read_it(proc):
    reads: list[int] = []

    def reader() -> int | None:
        reads.append(1)
        return None

    deaths = Deaths(reader)
    assert deaths.record(proc(), None, KILL, NOW) == "signal"
    assert deaths.record(proc(), 0, None, NOW) == "exit"
    assert deaths.record(proc(), None, TERM, NOW) == "signal"
    assert len(reads) == 2  # at start, and at the one SIGKILL


def test_an_unreadable_count_is_not_fatal(proc):
    def broken() -> int | None:
        raise OSError("gone")

    assert Deaths(broken).record(proc(), None, KILL, NOW) == "signal"


# -- the count from cgroup files (v1 and v2), as the master reads them ----------------------

V1_MOUNT = "30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
V2_MOUNT = "30 25 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"


def tree(root: Path, version: int) -> Path:
    """A fixture tree: our group /app.slice/x.service; returns the counting file."""
    (root / "proc/self").mkdir(parents=True)
    if version == 2:
        (root / "proc/self/cgroup").write_text("0::/app.slice/x.service\n")
        (root / "proc/self/mountinfo").write_text(V2_MOUNT)
        group = root / "sys/fs/cgroup/app.slice/x.service"
        name = "memory.events"
    else:
        (root / "proc/self/cgroup").write_text("4:memory:/app.slice/x.service\n0::/\n")
        (root / "proc/self/mountinfo").write_text(V1_MOUNT)
        group = root / "sys/fs/cgroup/memory/app.slice/x.service"
        name = "memory.oom_control"
    group.mkdir(parents=True)
    return group / name


def write_count(path: Path, version: int, kills: int) -> None:
    if version == 2:
        path.write_text(f"low 0\nhigh 0\nmax 3\noom 2\noom_kill {kills}\noom_group_kill 0\n")
    else:
        path.write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")


@pytest.mark.parametrize("version", [1, 2])
def test_oom_kill_counted_from_cgroup_files(proc, tmp_path, version):
    events = tree(tmp_path, version)
    write_count(events, version, 3)  # kills before we started are not ours
    deaths = Deaths(cgroup_oom_reader(FileReader(str(tmp_path))))
    assert deaths.last_oom == 3
    assert deaths.record(proc(), None, KILL, NOW) == "signal"
    write_count(events, version, 4)  # the kernel's OOM killer struck
    assert deaths.record(proc(), None, KILL, NOW) == "oom"
    assert deaths.record(proc(), None, KILL, NOW) == "signal"


def test_the_exits_family_counts_every_cause(proc):
    deaths = Deaths(counts([0, 1, 1]))
    deaths.record(proc(), None, KILL, NOW)
    deaths.record(proc(), 0, None, NOW)
    deaths.record(proc(), 0, None, NOW)
    text = write(deaths.own_families(), openmetrics=False).body.decode()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    expected = {**dict.fromkeys(CAUSES, 0.0), "oom": 1.0, "exit": 2.0}
    assert lines == [f'unicornish_worker_exits_total{{cause="{c}"}} {expected[c]}' for c in CAUSES]
    assert text.startswith("# HELP unicornish_worker_exits_total Workers reaped, by cause")
