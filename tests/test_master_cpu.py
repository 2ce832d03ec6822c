"""The master never spins: its own CPU time while it waits, in states that once spun.

Each test brings the master into a state, then reads its user + system CPU
time from /proc over a few seconds and fails above 5 % of a core.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import cpu_seconds, slow_boot_app, wait_until

WINDOW = 3.0
MAX_SHARE = 0.05


def assert_quiet(pid: int, what: str) -> None:
    before = cpu_seconds(pid)
    began = time.monotonic()
    until = began + WINDOW
    wait_until(lambda: time.monotonic() >= until, WINDOW + 2, f"{WINDOW}s to pass")
    used = cpu_seconds(pid) - before
    share = used / (time.monotonic() - began)
    assert share <= MAX_SHARE, f"master used {share:.0%} of a CPU while {what}"


SLEEPY = """
import os, time
def worker_start(worker):
    time.sleep(0.05)
"""


def test_no_workers(start, app_file):
    run = start("--app", str(app_file(SLEEPY)), "--workers", "0")
    run.wait_log("master process ready")
    assert_quiet(run.pid, "it had no workers")


def test_no_workers_with_a_spare(start, app_file):
    run = start("--app", str(app_file(SLEEPY)), "--workers", "0", "--spares", "1")
    run.wait_log("master process ready")
    assert_quiet(run.pid, "it had no workers and --spares 1")


def test_reload_whose_workers_boot_slowly(start, app_file, tmp_path: Path):
    flag = tmp_path / "slow"
    run = start("--app", str(app_file(slow_boot_app(flag, 8))), "--workers", "4")
    run.wait_ready(4)
    flag.write_text("")
    run.signal(signal.SIGHUP)
    run.wait_log(r"HUP received")
    run.wait_log(r"worker\[\d\] spawning", 5)
    assert_quiet(run.pid, "new workers of a reload booted slowly")
    assert "reload done" not in run.log()


def test_spare_in_a_slow_after_fork(start, app_file, tmp_path: Path):
    flag = tmp_path / "slow"
    run = start("--app", str(app_file(slow_boot_app(flag, 8))), "--workers", "2", "--spares", "1")
    pids = run.wait_ready(2)
    run.wait_log(r"spare spawned pid=")
    flag.write_text("")
    os.kill(pids[0], signal.SIGKILL)
    run.wait_log(r"a spare takes the slot")
    assert_quiet(run.pid, "a spare that took a slot was in a slow after_fork")


def test_crash_loop(start, app_file):
    crashing = "def worker_start(worker):\n    raise RuntimeError('broken')\n"
    run = start("--app", str(app_file(crashing)), "--workers", "2")
    run.wait_log("crash loop", 2, 15)
    assert_quiet(run.pid, "workers were in a crash loop")


def test_long_tasks_with_timeout(start, app_file):
    long_tasks = "import time\ndef worker_start(worker):\n    time.sleep(60)\n"
    run = start("--app", str(app_file(long_tasks)), "--workers", "4", "--timeout", "30")
    run.wait_ready(4)
    assert_quiet(run.pid, "every worker was in a long task under --timeout")


def test_stopping_with_a_worker_that_ignores_quit(start, app_file):
    stubborn = (
        "import signal, time\n"
        "def after_fork(worker):\n"
        "    signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
        "def worker_start(worker):\n"
        "    time.sleep(0.05)\n"
    )
    run = start("--app", str(app_file(stubborn)), "--workers", "2", "--graceful-timeout", "30")
    run.wait_ready(2)
    run.signal(signal.SIGQUIT)
    run.wait_log("graceful stop")
    assert_quiet(run.pid, "it waited for a worker that ignores QUIT")
    assert run.proc.poll() is None


@pytest.mark.parametrize("idle", ["0", "2"])
def test_idle(start, app_file, idle):
    """The plain case, for comparison: idle workers in long sleeps."""
    long_tasks = "import time\ndef worker_start(worker):\n    time.sleep(60)\n"
    run = start("--app", str(app_file(long_tasks)), "--workers", idle)
    run.wait_log("master process ready")
    assert_quiet(run.pid, "idle")
