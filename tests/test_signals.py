"""TTIN/TTOU, WINCH, USR1, --graceful-timeout and process-group kills: real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import psutil
from helpers import BIN, gone, let_pass, loop_app, wait_until


def reaped_nrs(run) -> list[int]:
    return [int(n) for n in re.findall(r"reaped pid=\d+ worker\[(\d+)\]", run.log())]


def test_ttin_twice_then_ttou_three_times(start, app_file):
    app = app_file(loop_app(0.02))
    run = start("--app", str(app), "--workers", "1")
    first = run.wait_ready(1)
    run.signal(signal.SIGTTIN)
    let_pass(0.3)
    run.signal(signal.SIGTTIN)
    pids = run.wait_workers(3)
    assert sorted(pids) == [0, 1, 2] and pids[0] == first[0]
    run.wait_log(r"worker\[\d\] ready", 3)
    for _ in range(3):
        run.signal(signal.SIGTTOU)
        let_pass(0.3)
    run.wait_workers(0)
    run.wait_log(r"reaped pid=", 3)
    # The highest nr leaves first, each gracefully (exit 0, not killed).
    assert reaped_nrs(run) == [2, 1, 0], run.log()
    for nr, pid in pids.items():
        assert f"reaped pid={pid} worker[{nr}] status=exit 0" in run.log()
    assert run.count(r"TTOU: \d+ workers wanted") == 3
    assert "TTOU: 0 workers wanted" in run.log()


def test_ttou_to_zero_then_below_then_ttin_back(start, app_file):
    app = app_file(loop_app(0.02))
    run = start("--app", str(app), "--workers", "1")
    pids = run.wait_ready(1)
    run.signal(signal.SIGTTOU)
    run.wait_log(rf"reaped pid={pids[0]} worker\[0\] status=exit 0")
    run.wait_workers(0)
    run.signal(signal.SIGTTOU)  # never below 0
    run.wait_log(r"TTOU: 0 workers wanted", 2)
    run.signal(signal.SIGTTIN)
    run.wait_log(r"TTIN: 1 workers wanted")
    new = run.wait_workers(1)
    assert list(new) == [0] and new[0] != pids[0]
    run.wait_log(r"worker\[0\] ready", 2)


def test_winch_stops_workers_keeps_master_and_ttin_brings_one_back(start, app_file):
    app = app_file(loop_app(0.02))
    run = start("--app", str(app), "--workers", "3")
    pids = run.wait_ready(3)
    run.signal(signal.SIGWINCH)
    run.wait_workers(0)
    run.wait_log(r"reaped pid=", 3)
    for nr, pid in pids.items():
        assert f"reaped pid={pid} worker[{nr}] status=exit 0" in run.log()
    assert run.proc.poll() is None
    # It stays at zero (no respawn), until TTIN.
    let_pass(0.3)
    assert run.workers() == []
    run.signal(signal.SIGTTIN)
    assert list(run.wait_workers(1)) == [0]


def test_winch_is_ignored_while_stdin_is_a_terminal(tmp_path, app_file):
    app = app_file(loop_app(0.02))
    log_path = tmp_path / "log"
    main_fd, sub_fd = os.openpty()
    proc = subprocess.Popen(
        [str(BIN), "--app", str(app), "--workers", "2", "--log-file", str(log_path)],
        stdin=sub_fd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(sub_fd)

    def log() -> str:
        return log_path.read_text() if log_path.exists() else ""

    try:
        wait_until(lambda: log().count("ready") >= 3, 10, "master and 2 workers ready")
        pids = {c.pid for c in psutil.Process(proc.pid).children()}
        os.kill(proc.pid, signal.SIGWINCH)
        wait_until(lambda: "WINCH ignored" in log(), 5, "WINCH ignored line")
        assert {c.pid for c in psutil.Process(proc.pid).children()} == pids
        assert "reaped" not in log()
    finally:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        os.killpg(proc.pid, signal.SIGKILL)
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        proc.wait(5)
        os.close(main_fd)


def test_usr1_reopens_the_log_in_master_and_workers(start, app_file, tmp_path):
    # One worker idle between short tasks, one in the middle of a long task.
    app = app_file("""
        import os, time
        def worker_start(worker):
            worker.log.info(f"task {worker.nr} pid={os.getpid()} tasks={worker.tasks}")
            time.sleep(1.5 if worker.nr == 1 else 0.05)
    """)
    run = start("--app", str(app), "--workers", "2")
    pids = run.wait_ready(2)
    run.wait_log(r"task 1 pid=")
    rotated = tmp_path / "unicornish.host.log.1"
    os.rename(run.log_path, rotated)
    run.signal(signal.SIGUSR1)
    wait_until(lambda: run.log_path.exists(), 5, "a new log file")
    run.wait_log(r"reopened log files")
    # The master, the idle worker and the busy worker all write to the new file.
    run.wait_log(rf"task 0 pid={pids[0]}")
    run.wait_log(rf"task 1 pid={pids[1]}", timeout=5)
    new = run.log_path.read_text()
    assert "reopened log files" in new
    old = rotated.read_text()
    assert "master process ready" in old and "master process ready" not in new
    # QUIT: the exit lines go to the new file too.
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    new = run.log_path.read_text()
    for nr in (0, 1):
        assert f"worker[{nr}] exited" in new
    assert "master exited" in new


IGNORES_QUIT_APP = """
import os, signal, subprocess, sys, time
def after_fork(worker):
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"grandchild {child.pid} of {os.getpid()}", flush=True)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_worker_ignoring_quit_is_killed_after_graceful_timeout_with_its_grandchild(start, app_file):
    grace = 1.0
    app = app_file(IGNORES_QUIT_APP)
    run = start("--app", str(app), "--workers", "1", "--graceful-timeout", str(grace))
    pids = run.wait_ready(1)
    line = wait_until(lambda: re.search(r"grandchild (\d+) of", run.stdout()), 5, "grandchild")
    grandchild = int(line.group(1))  # type: ignore[union-attr]
    assert not gone(grandchild)
    sent = time.monotonic()
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    took = time.monotonic() - sent
    assert grace <= took < grace + 3, took
    log = run.log()
    assert "did not stop after SIGQUIT; sending SIGKILL" in log
    assert f"reaped pid={pids[0]} worker[0] status=killed by SIGKILL" in log
    wait_until(lambda: gone(grandchild), 5, "the grandchild to be killed with its worker")


def test_ttou_waits_graceful_timeout_then_kills(start, app_file):
    grace = 0.8
    app = app_file(IGNORES_QUIT_APP)
    run = start("--app", str(app), "--workers", "2", "--graceful-timeout", str(grace))
    pids = run.wait_ready(2)
    sent = time.monotonic()
    run.signal(signal.SIGTTOU)
    wait_until(lambda: gone(pids[1]), 10, "worker[1] to be killed")
    assert grace <= time.monotonic() - sent < grace + 3
    run.wait_log(rf"reaped pid={pids[1]} worker\[1\] status=killed by SIGKILL")
    assert run.worker_pids() == {0: pids[0]}


def test_term_kills_the_worker_group_after_a_short_wait(start, app_file):
    """TERM: workers (and what they started) get TERM at once; one that ignores
    it is SIGKILLed after a short wait, not the whole --graceful-timeout."""
    app = app_file("""
        import os, signal, subprocess, sys, time
        def after_fork(worker):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            child = subprocess.Popen([sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(300)"])
            print(f"grandchild {child.pid} of {os.getpid()}", flush=True)
        def worker_start(worker):
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "1", "--graceful-timeout", "60")
    run.wait_ready(1)
    line = wait_until(lambda: re.search(r"grandchild (\d+) of", run.stdout()), 5, "grandchild")
    grandchild = int(line.group(1))  # type: ignore[union-attr]
    sent = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(15) == 0
    assert time.monotonic() - sent < 10
    wait_until(lambda: gone(grandchild), 5, "the grandchild to be killed")


def test_winch_waits_graceful_timeout_then_kills(start, app_file):
    grace = 0.8
    app = app_file(IGNORES_QUIT_APP)
    run = start("--app", str(app), "--workers", "1", "--graceful-timeout", str(grace))
    pids = run.wait_ready(1)
    sent = time.monotonic()
    run.signal(signal.SIGWINCH)
    wait_until(lambda: gone(pids[0]), 10, "worker[0] to be killed")
    assert grace <= time.monotonic() - sent < grace + 3
    run.wait_log(rf"reaped pid={pids[0]} worker\[0\] status=killed by SIGKILL")
    assert run.proc.poll() is None  # the master stays


def test_usr1_with_a_relative_log_file_and_an_app_that_changes_directory(start, app_file, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    app = app_file(f"""
        import os, time
        def after_fork(worker):
            os.chdir({str(tmp_path / "elsewhere")!r})
        def worker_start(worker):
            worker.log.info(f"task pid={{os.getpid()}} tasks={{worker.tasks}}")
            time.sleep(0.05)
    """)
    # Relative to the directory the master was started in (the fixture's cwd).
    run = start("--app", str(app), "--log-file", "unicornish.host.log", log_file=False)
    pids = run.wait_ready(1)
    run.wait_log(rf"task pid={pids[0]}")
    os.rename(run.log_path, tmp_path / "unicornish.host.log.1")
    run.signal(signal.SIGUSR1)
    run.wait_log("reopened log files")
    run.wait_log(rf"task pid={pids[0]}")
    assert not (tmp_path / "elsewhere" / "unicornish.host.log").exists()
