"""Defects found by reading the master, fixed in its redesign: each seen from outside."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from conftest import loop_app, run_cli, wait_until

MAPS_APP = """
import time
def after_fork(worker):
    with open("/proc/self/maps") as maps:
        shared = [line for line in maps if "/dev/zero" in line or "SYSV" in line]
    print(f"worker[{worker.nr}] pid={worker.pid} shared mappings: {len(shared)}", flush=True)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_a_worker_maps_only_its_own_scoreboard_page(start, app_file):
    """Not its siblings' pages: it could write their heartbeats."""
    run = start("--app", str(app_file(MAPS_APP)), "--workers", "4", "--spares", "1")
    pids = run.wait_ready(4)
    os.kill(pids[2], signal.SIGKILL)  # the spare takes slot 2
    run.wait_log(r"a spare takes the slot")
    wait_until(lambda: run.stdout().count("shared mappings") >= 5, 10, "five reports")
    counts = [int(n) for n in re.findall(r"shared mappings: (\d+)", run.stdout())]
    # Its own two pages: its scoreboard and its app-metrics arena; none of the
    # four others' (with them, 2 x 5 = 10).
    assert counts and set(counts) == {2}, run.stdout()


def test_usr1_reaches_spares(start, app_file, tmp_path: Path):
    """A spare that takes a slot after a log rotation writes into the new file."""
    run = start("--app", str(app_file(loop_app())), "--workers", "1", "--spares", "1")
    pids = run.wait_ready(1)
    run.wait_log(r"spare spawned pid=")
    rotated = tmp_path / "unicornish.host.log.1"
    os.rename(run.log_path, rotated)
    run.signal(signal.SIGUSR1)
    wait_until(lambda: run.log_path.exists() and "reopened log files" in run.log(), 10)
    os.kill(pids[0], signal.SIGKILL)
    wait_until(
        lambda: "worker[0] ready" in run.log(), 10, "the spare's ready line, in the new file"
    )


def test_a_spare_keeps_the_max_tasks_limit_it_was_given(start, app_file):
    """A second, different limit made the master see a recycle as an unasked
    exit: false crash-loop warnings."""
    run = start(
        "--app",
        str(app_file(loop_app(0.002))),
        "--workers",
        "2",
        "--spares",
        "1",
        "--max-tasks",
        "60",
    )
    run.wait_log(r"a spare takes the slot", 3, 20)
    wait_until(lambda: run.count(r"recycled after \d+ tasks \(--max-tasks\)") >= 6, 20)
    assert "crash loop" not in run.log()


def test_a_storm_of_hups_forks_a_few_generations(start, app_file):
    run = start("--app", str(app_file(loop_app())), "--workers", "2")
    run.wait_ready(2)
    for _ in range(50):
        run.signal(signal.SIGHUP)
    run.wait_log("reload done", 1, 15)
    wait_until(lambda: run.count("reload done") == run.count("HUP received"), 15)
    assert run.count("HUP received") <= 3, run.log()
    # 2 workers at start, then 2 per reload at most.
    assert run.count(r"worker\[\d\] spawned pid=") <= 2 + 2 * 3


def let_pass(seconds: float) -> None:
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, seconds + 1, f"{seconds}s to pass")


SLOW_BOOT = """
import os, time
def after_fork(worker):
    if os.path.exists({flag!r}):
        time.sleep(4)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_a_hup_during_a_reload_keeps_the_proven_release_as_rollback(start, tmp_path: Path):
    """HUP 1 (3 workers) boots slowly; HUP 2 (4 workers, a broken app) fails: the
    master goes back to the 2 workers that ran before HUP 1, not to HUP 1's
    unproven 3, and keeps one worker per slot."""
    app, config, flag = tmp_path / "app.py", tmp_path / "conf.py", tmp_path / "slow"
    app.write_text(SLOW_BOOT.format(flag=str(flag)))
    config.write_text(f"app = {str(app)!r}\nworkers = 2\n")
    sock = tmp_path / "ctl.sock"
    run = start("-c", str(config), "--control", str(sock), "--graceful-timeout", "5")
    run.wait_ready(2)
    flag.write_text("")
    config.write_text(f"app = {str(app)!r}\nworkers = 3\n")
    run.signal(signal.SIGHUP)
    run.wait_log("HUP received", 1)
    let_pass(1.2)  # past the HUP-storm window: the next HUP is a reload of its own
    broken = tmp_path / "broken.py"
    broken.write_text(
        "def after_fork(worker):\n    raise SystemExit(3)\ndef worker_start(worker):\n    pass\n"
    )
    config.write_text(f"app = {str(broken)!r}\nworkers = 4\n")
    run.signal(signal.SIGHUP)
    run.wait_log(r"reload failed: new worker\[\d\] exited before it was ready", 1, 15)
    flag.unlink()

    def settled() -> bool:
        reply = run_cli("ctl", "--control", str(sock), "status")
        status = json.loads(reply.stdout)
        return status["master"]["workers_wanted"] == 2 and len(run.workers()) == 2

    wait_until(settled, 15, "2 workers wanted and running")
    assert run.count("HUP received") == 2
