"""Leak checks (issue 7): 1,000 respawns (300 in `make check`) and 10 USR2 + QUIT
cycles leave the master's file descriptors, threads, memory and child list as
they were.

Two kinds of USR2 + QUIT cycle: the rollback (USR2, then QUIT the *new*
master: the old one carries on, and must not keep anything of it) and the
upgrade (USR2, then QUIT the *old* one: each generation of master must look
like the first, not inherit one more descriptor each time).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import children, gone, loop_app, wait_until, worker_children
from reliability import log_tracebacks, snapshot, zombies

RESPAWNS = 1000  # under --soak; `make check` does SHORT_RESPAWNS
SHORT_RESPAWNS = 300
CYCLES = 10


class LogTail:
    """Counts lines matching a pattern in a growing log, reading each byte once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        return [line.decode(errors="replace") for line in lines]


def respawn_rounds(run: Any, tail: LogTail, workers: int, total: int) -> int:
    """SIGKILL every (ready) worker, wait until all are replaced and ready; repeat."""
    done = 0
    while done < total:
        pids = worker_children(run.pid)
        assert len(pids) == workers
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        ready = 0
        deadline = time.monotonic() + 10
        while ready < workers:
            ready += sum(1 for line in tail.new_lines() if re.search(r"worker\[\d+\] ready", line))
            assert time.monotonic() < deadline, f"respawn stuck:\n{run.log()[-2000:]}"
            time.sleep(0.002)
        wait_until(
            lambda pids=pids: (
                len(worker_children(run.pid)) == workers
                and not set(pids) & set(worker_children(run.pid))
            ),
            10,
            "the replacements",
        )
        done += workers
    return done


@pytest.mark.parametrize("preload", [False, True], ids=["plain", "preload"])
def test_respawns_leak_nothing(start, app_file, tmp_path, preload, soak):
    app = app_file(loop_app(0.01))
    workers = 4
    args = ["--app", str(app), "--workers", str(workers), "--listen", f"unix:{tmp_path}/l.sock"]
    args += ["--control", str(tmp_path / "ctl.sock")]
    if preload:
        args.append("--preload")
    run = start(*args)
    run.wait_ready(workers, 20)
    tail = LogTail(run.log_path)
    tail.new_lines()
    respawn_rounds(run, tail, workers, 100)  # warm-up: first-time allocations
    before = snapshot(run.pid)
    started = time.monotonic()
    count = respawn_rounds(run, tail, workers, RESPAWNS if soak else SHORT_RESPAWNS)
    elapsed = time.monotonic() - started
    wait_until(lambda: not zombies(run.pid), 5, "no zombie")
    after = snapshot(run.pid)
    assert after["fd_targets"] == before["fd_targets"], (before, after)
    assert after["threads"] == before["threads"] == 1
    growth = after["rss"] - before["rss"]
    assert growth < 2 * 1024 * 1024, f"RSS grew by {growth} bytes over {count} respawns"
    kids = children(run.pid)
    assert len(kids) == workers and all(comm.startswith("worker[") for _p, comm, _s in kids)
    assert log_tracebacks(run.log()) == []
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    figures = {
        "respawns": count,
        "seconds": round(elapsed, 1),
        "fds_before": before["fds"],
        "fds_after": after["fds"],
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "children_after": len(kids),
    }
    report("respawns-preload" if preload else "respawns-plain", figures, soak)


def ready_master_lines(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"master process ready pid=(\d+)", log)]


def start_upgradable(start, app_file, tmp_path):
    """A master with what a USR2 hands over: pid file, a listener, a control socket."""
    app = app_file(loop_app(0.01))
    pid_file = tmp_path / "u.pid"
    run = start(
        "--app",
        str(app),
        "--workers",
        "2",
        "--pid",
        str(pid_file),
        "--listen",
        f"unix:{tmp_path}/l.sock",
        "--control",
        str(tmp_path / "ctl.sock"),
    )
    run.wait_ready(2, 20)
    return run, pid_file


def report(name: str, figures: dict, soak: bool) -> None:
    print(f"\n{name}: {figures}")
    if soak:
        from reliability import record_part

        record_part("leaks", name, figures)


def test_usr2_rollback_cycles_leak_nothing(start, app_file, tmp_path, soak):
    """USR2, then QUIT the new master: the old one carries on, unchanged."""
    run, pid_file = start_upgradable(start, app_file, tmp_path)
    workers = sorted(worker_children(run.pid))

    def one_cycle(n: int) -> None:
        run.signal(signal.SIGUSR2)
        wait_until(lambda: len(ready_master_lines(run.log())) >= n + 2, 20, "a new master")
        new = ready_master_lines(run.log())[-1]
        wait_until(lambda: len(worker_children(new)) == 2, 20, "the new master's workers")
        wait_until(lambda: pid_file.read_text().strip() == str(new), 10, "the new pid file")
        os.kill(new, signal.SIGQUIT)
        wait_until(
            lambda: run.count(rf"new master pid={new} exited") == 1, 20, "the old one to notice"
        )
        wait_until(lambda: pid_file.read_text().strip() == str(run.pid), 10, "pid file restored")

    one_cycle(0)  # warm-up (imports of the re-exec code)
    before = snapshot(run.pid)
    started = time.monotonic()
    for n in range(1, CYCLES + 1):
        one_cycle(n)
    elapsed = time.monotonic() - started
    wait_until(lambda: not zombies(run.pid), 5, "no zombie")
    after = snapshot(run.pid)
    assert after["fd_targets"] == before["fd_targets"], (before, after)
    assert after["threads"] == before["threads"] == 1
    growth = after["rss"] - before["rss"]
    assert growth < 2 * 1024 * 1024, f"RSS grew by {growth} bytes over {CYCLES} cycles"
    assert sorted(worker_children(run.pid)) == workers  # its workers were never touched
    assert [c for c, _comm, _s in children(run.pid)] != [] and len(children(run.pid)) == 2
    assert not (tmp_path / "u.pid.oldbin").exists()
    assert log_tracebacks(run.log()) == []
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    figures = {
        "cycles": CYCLES,
        "seconds": round(elapsed, 1),
        "fds_before": before["fds"],
        "fds_after": after["fds"],
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "children_after": 2,
    }
    report("usr2-rollback", figures, soak)


def test_usr2_upgrade_cycles_leak_nothing(start, app_file, tmp_path, soak):
    """USR2, then QUIT the old master, ten times: generation 11 looks like generation 1."""
    run, pid_file = start_upgradable(start, app_file, tmp_path)
    current = run.pid
    first = snapshot(current)
    started = time.monotonic()
    generations = [current]
    for n in range(CYCLES):
        os.kill(current, signal.SIGUSR2)
        want = n + 2
        wait_until(lambda w=want: len(ready_master_lines(run.log())) >= w, 20, "a new master")
        new = ready_master_lines(run.log())[-1]
        wait_until(lambda p=new: len(worker_children(p)) == 2, 20, "the new master's workers")
        wait_until(lambda p=new: pid_file.read_text().strip() == str(p), 10, "the new pid file")
        os.kill(current, signal.SIGQUIT)
        wait_until(lambda c=current: gone(c), 20, "the old master gone")
        current = new
        generations.append(current)
    elapsed = time.monotonic() - started
    last = snapshot(current)
    # Same kinds of fds (pipes, sockets, the log) in the same number: nothing inherited twice.
    kinds = [re.sub(r"\[\d+\]", "", t) for t in first["fd_targets"]]
    assert [re.sub(r"\[\d+\]", "", t) for t in last["fd_targets"]] == kinds, (first, last)
    assert last["threads"] == 1
    assert len(worker_children(current)) == 2 and not zombies(current)
    assert not (tmp_path / "u.pid.oldbin").exists()
    assert log_tracebacks(run.log()) == []
    os.kill(current, signal.SIGQUIT)
    wait_until(lambda: gone(current), 20, "the last master gone")
    assert not pid_file.exists()
    figures = {
        "cycles": CYCLES,
        "seconds": round(elapsed, 1),
        "fds_first": first["fds"],
        "fds_last": last["fds"],
        "rss_first": first["rss"],
        "rss_last": last["rss"],
    }
    report("usr2-upgrade", figures, soak)
