"""--timeout: a stuck task is killed (after a traceback dump), a healthy one never is."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
from helpers import gone, wait_until

# A task that gets stuck exactly once (the first worker to reach its 3rd task),
# and says when, on the shared CLOCK_MONOTONIC.
STUCK_ONCE_APP = """
import os, sys, time
FLAG = {flag!r}
def stuck_here(worker):
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"grandchild {{child.pid}}", flush=True)
    print(f"stuck {{os.getpid()}} {{time.monotonic()}}", flush=True)
    while True:
        time.sleep(100)
def worker_start(worker):
    if worker.tasks == 2:
        try:
            fd = os.open(FLAG, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            stuck_here(worker)
    time.sleep(0.02)
"""


def wait_gone(pid: int, timeout: float) -> float:
    """Wait for pid to die; return the CLOCK_MONOTONIC time it was seen gone."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still alive after {timeout}s")
        time.sleep(0.005)
    return time.monotonic()


def stuck_line(run) -> tuple[int, float]:
    line = wait_until(
        lambda: [x for x in run.stdout().splitlines() if x.startswith("stuck ")],
        10,
        "a task to get stuck",
    )
    _, pid, when = line[0].split()  # type: ignore[index]
    return int(pid), float(when)


def test_stuck_task_is_killed_once_with_traceback_and_replaced(start, app_file, tmp_path):
    timeout = 1.0
    app = app_file(STUCK_ONCE_APP.format(flag=str(tmp_path / "stuck")))
    # --poll 30: the kill must come from the deadline, not from a poll.
    run = start("--app", str(app), "--workers", "2", "--timeout", str(timeout), "--poll", "30")
    run.wait_ready(2)
    pid, stuck_at = stuck_line(run)
    killed_at = wait_gone(pid, 10)
    assert timeout <= killed_at - stuck_at <= 2 * timeout, killed_at - stuck_at
    log = run.wait_log(rf"reaped pid={pid} worker\[\d\] status=killed by SIGKILL")
    # Its traceback, dumped before the kill, shows where the task was stuck.
    assert "in stuck_here" in log and str(app) in log, log
    assert log.index("in stuck_here") < log.index(f"reaped pid={pid}")
    # Exactly once, and a replacement takes its slot.
    nr = int(re.search(rf"worker\[(\d+)\] spawned pid={pid}\b", log).group(1))  # type: ignore[union-attr]
    wait_until(lambda: run.worker_pids().get(nr) not in (None, pid), 5, "a replacement worker")
    run.wait_ready(2)
    run.wait_log(r"worker\[\d\] ready", 3)
    # What the stuck task started went with it (the worker's process group).
    grandchild = int(re.search(r"grandchild (\d+)", run.stdout()).group(1))  # type: ignore[union-attr]
    wait_until(lambda: gone(grandchild), 5, "the stuck task's child to be killed too")
    assert run.count(r"timed out:") == 1, run.log()
    assert run.count(rf"reaped pid={pid} ") == 1
    assert run.count(r"status=killed by SIGKILL") == 1


def test_first_task_after_an_idle_accept_is_timed(start, app_file, tmp_path):
    """A worker idle in accept() has no beat; the task that follows still times out
    between timeout and 2*timeout, even though the master sleeps up to --poll 30."""
    timeout = 1.0
    sock_path = tmp_path / "s.sock"
    app = app_file("""
        import os, time
        def worker_start(worker):
            got = worker.accept()
            if got is None:
                return
            print(f"stuck {os.getpid()} {time.monotonic()}", flush=True)
            while True:
                time.sleep(100)
    """)
    run = start(
        "--app",
        str(app),
        "--workers",
        "1",
        "--timeout",
        str(timeout),
        "--listen",
        f"unix:{sock_path}",
    )
    run.wait_ready(1)
    # Let the master settle into its long sleep while the worker is idle; it
    # wakes about once per --timeout to look at it, never in a busy loop.
    master = psutil.Process(run.pid)
    cpu_before = sum(master.cpu_times()[:2])
    idle_since = time.monotonic()
    wait_until(lambda: time.monotonic() - idle_since > 1.5 * timeout, 5, "an idle period")
    assert sum(master.cpu_times()[:2]) - cpu_before < 0.2
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(sock_path))
        pid, stuck_at = stuck_line(run)
        killed_at = wait_gone(pid, 10)
    finally:
        client.close()
    assert timeout <= killed_at - stuck_at <= 2 * timeout + 0.3, killed_at - stuck_at
    assert run.count("timed out:") == 1


def test_loading_and_after_fork_are_not_timed(start, app_file):
    timeout = 0.5
    app = app_file("""
        import os, time
        time.sleep(0.8)          # a slow import
        def after_fork(worker):
            time.sleep(0.8)      # a slow after_fork
        def worker_start(worker):
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "1", "--timeout", str(timeout))
    pids = run.wait_ready(1, timeout=15)
    # Several timeouts' worth of short tasks later, still the same worker.
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 3 * timeout, 5, "three timeouts")
    assert run.worker_pids() == pids
    assert "timed out" not in run.log()


def test_notify_keeps_a_long_task_alive(start, app_file):
    timeout = 0.6
    app = app_file("""
        import os, time
        def worker_start(worker):
            for _ in range(12):          # 2.4 s, four times --timeout
                time.sleep(0.2)
                worker.notify()
            print(f"long task done {os.getpid()}", flush=True)
    """)
    run = start("--app", str(app), "--workers", "1", "--timeout", str(timeout))
    pids = run.wait_ready(1)
    wait_until(lambda: "long task done" in run.stdout(), 10, "a long task to finish")
    assert f"long task done {pids[0]}" in run.stdout()
    assert "timed out" not in run.log()
    assert run.worker_pids() == pids


def _stop_cont_test(start, app_file, freeze_workers: bool) -> None:
    timeout = 1.0
    # Small sleeps: a task frozen midway still needs its remaining steps after
    # SIGCONT, so its beat stays old for a while after the master resumes.
    app = app_file("""
        import time
        def worker_start(worker):
            for _ in range(20):
                time.sleep(0.02)
    """)
    run = start("--app", str(app), "--workers", "2", "--timeout", str(timeout))
    pids = run.wait_ready(2)
    os.kill(run.pid, signal.SIGSTOP)
    try:
        if freeze_workers:
            for pid in pids.values():
                os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: time.monotonic() - stopped > 2.5 * timeout, 5, "a long stop")
    finally:
        os.kill(run.pid, signal.SIGCONT)
        if freeze_workers:
            for pid in pids.values():
                os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_until(lambda: time.monotonic() - resumed > 1.5 * timeout, 5, "time after resuming")
    assert run.worker_pids() == pids, run.log()
    assert "timed out" not in run.log()
    assert "SIGKILL" not in run.log()


def test_master_stopped_longer_than_timeout_kills_no_worker(start, app_file):
    _stop_cont_test(start, app_file, freeze_workers=False)


def test_everything_frozen_longer_than_timeout_kills_no_worker(start, app_file):
    """A whole machine or container suspended: master and workers stop together."""
    _stop_cont_test(start, app_file, freeze_workers=True)


def test_worker_exit_after_the_last_task_is_not_timed(start, app_file):
    """worker_exit (after TTOU) is not a task: it may run longer than --timeout."""
    timeout = 0.6
    app = app_file("""
        import os, time
        def worker_start(worker):
            time.sleep(0.4)
        def worker_exit(worker):
            time.sleep(0.5)   # with the last task: longer than --timeout
            print(f"worker_exit done {os.getpid()}", flush=True)
    """)
    run = start("--app", str(app), "--workers", "2", "--timeout", str(timeout))
    pids = run.wait_ready(2)
    run.signal(signal.SIGTTOU)
    run.wait_log(rf"reaped pid={pids[1]} worker\[1\]", timeout=10)
    assert f"reaped pid={pids[1]} worker[1] status=exit 0" in run.log(), run.log()
    assert f"worker_exit done {pids[1]}" in run.stdout()
    assert "timed out" not in run.log()
