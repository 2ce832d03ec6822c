"""Orphans and PID 1 (issue 5): every child handed to the master is reaped, none is a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import BIN, run_cli, unshare_or_skip, wait_until

# worker[0]'s first task forks a child and exits (sys.exit(0)): the child is
# an orphan; it lives 1.5 s, then exits 7.
ORPHAN_APP = """
import os, sys, time
FLAG = {flag!r}
def worker_start(worker):
    if worker.nr == 0 and not os.path.exists(FLAG):
        with open(FLAG, "w") as f:
            child = os.fork()
            if child == 0:
                time.sleep(1.5)
                os._exit(7)
            f.write(str(child))
        sys.exit(0)
    time.sleep(0.05)
"""


def real_workers(master_pid: int) -> list[int]:
    """Workers, not their orphans: an orphan forked by a worker inherits its title
    (`worker[n]`), but only a worker leads its own process group in the master's session."""
    found = []
    try:
        children = psutil.Process(master_pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if (
                child.name().startswith("worker[")
                and os.getpgid(child.pid) == child.pid
                and os.getsid(child.pid) == os.getsid(master_pid)
            ):
                if child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
        except (psutil.Error, OSError):
            continue
    return found


def zombies_under(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_subreaper_reaps_a_dead_workers_child_without_mistaking_it(start, app_file, tmp_path):
    flag = tmp_path / "forked"
    app = app_file(ORPHAN_APP.format(flag=str(flag)))
    pid_file = tmp_path / "app.pid"
    run = start("--app", str(app), "--workers", "2", "--subreaper", "--pid", str(pid_file))
    wait_until(lambda: flag.exists() and flag.read_text(), 5, "the orphan's pid")
    orphan = int(flag.read_text())
    first = int(
        run.wait_log(r"worker\[0\] spawned pid=(\d+)").split("worker[0] spawned pid=")[1].split()[0]
    )
    run.wait_log(rf"reaped pid={first} worker\[0\] status=exit 0")
    # Its parent died: the kernel handed it to the master, not to init.
    assert "child subreaper" in run.log()
    try:
        parent = psutil.Process(orphan).ppid()
    except psutil.NoSuchProcess:
        parent = run.pid  # already gone: the log line below is the proof
    assert parent == run.pid
    if psutil.pid_exists(orphan):
        # `status --pid` does not take it for a worker either, though it has the title.
        wait_until(lambda: len(real_workers(run.pid)) == 2, 5, "2 workers")
        result = run_cli("status", "--pid", str(pid_file), "--json")
        listed = [w["pid"] for w in json.loads(result.stdout)["workers"]]
        assert orphan not in listed and len(listed) == 2, (orphan, listed)
    log = run.wait_log(rf"reaped orphan pid={orphan} status=exit 7")
    assert f"reaped pid={orphan} worker" not in log
    # The orphan was not counted as a worker: still exactly 2, no extra spawn.
    wait_until(lambda: len(real_workers(run.pid)) == 2, 5, "2 workers")
    assert run.count(r"spawned pid=") == 3
    assert zombies_under(run.pid) == []
    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0


# As pid 1: worker[0] leaves three orphans behind (one exits 5 at once, one runs
# until TERM and says so, one ignores TERM); each is in a session of its own,
# so no worker's process group signal reaches it.
PID1_APP = """
import os, signal, sys, time
OUT = {out!r}
def _orphan(code, wait_for_term):
    os.setsid()
    if wait_for_term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(os.path.join(OUT, "stubborn-running"), "w").close()
        while True:
            time.sleep(0.1)
    if wait_for_term:
        def on_term(signum, frame):
            open(os.path.join(OUT, "orphan-got-term"), "w").close()
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open(os.path.join(OUT, "orphan-running"), "w").close()
        while True:
            time.sleep(0.1)
    time.sleep(0.2)
    os._exit(code)
def worker_start(worker):
    flag = os.path.join(OUT, "forked")
    if worker.nr == 0 and not os.path.exists(flag):
        open(flag, "w").close()
        for code, wait in ((5, False), (0, True), (0, "ignore")):
            if os.fork() == 0:
                _orphan(code, wait)
        sys.exit(0)
    time.sleep(0.05)
"""


@pytest.fixture
def in_pid_namespace(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        except psutil.Error:
            pass
        proc.kill()
        proc.wait(5)


def start_as_pid1(procs: list, tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / "pid1.log"
    proc = subprocess.Popen(
        [
            unshare_or_skip(),
            "--pid",
            "--fork",
            "--mount-proc",
            str(BIN),
            *args,
            "--log-file",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "pid1.err", "wb"),  # noqa: SIM115 - closed with the process
        cwd=str(tmp),
        start_new_session=True,
    )
    procs.append(proc)
    return proc, log


def test_pid1_reaps_orphans_and_term_stops_everything(in_pid_namespace, app_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    app = app_file(PID1_APP.format(out=str(out)))
    proc, log = start_as_pid1(
        in_pid_namespace, tmp_path, "--app", str(app), "--workers", "2", "--graceful-timeout", "1"
    )
    wait_until(lambda: log.exists() and "master process ready pid=1" in log.read_text(), 10,
               "the master as pid 1")  # fmt: skip
    assert "running as pid 1" in log.read_text()
    wait_until(lambda: "reaped orphan" in log.read_text(), 10, "an orphan reaped by pid 1")
    assert "status=exit 5" in log.read_text()
    wait_until(
        lambda: (out / "orphan-running").exists() and (out / "stubborn-running").exists(),
        5,
        "the long-lived orphans",
    )
    master = psutil.Process(proc.pid).children()[0]
    wait_until(lambda: len(real_workers(master.pid)) == 2, 10, "2 workers again")
    assert zombies_under(proc.pid) == []
    master.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0  # unshare passes on the master's exit code
    text = log.read_text()
    assert "TERM received: quick stop" in text
    assert "pid 1: sending TERM to 2 leftover processes" in text
    assert "pid 1: leftover processes did not exit; sending SIGKILL" in text
    assert "master exited" in text
    # The orphan got a TERM (a chance to clean up), not just the namespace's SIGKILL.
    assert (out / "orphan-got-term").exists()


def test_pid1_give_up_exits_1(in_pid_namespace, app_file, tmp_path):
    app = app_file(
        "def after_fork(worker):\n    raise SystemExit(9)\ndef worker_start(w):\n    pass\n"
    )
    proc, log = start_as_pid1(
        in_pid_namespace, tmp_path, "--app", str(app), "--give-up-after", "0.5"
    )
    assert proc.wait(15) == 1
    assert "giving up (--give-up-after)" in log.read_text()
