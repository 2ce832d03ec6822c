"""--spares: booted standby processes that take a dead worker's slot."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
from helpers import loop_app, wait_until

APP = """
import os, time
def after_fork(worker):
    print(f"after_fork {worker.nr} {os.getpid()}", flush=True)
def worker_start(worker):
    time.sleep(0.05)
"""


def spares_of(run) -> list[int]:
    try:
        children = psutil.Process(run.pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if child.name() == "spare" and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
                run.seen.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_spare_takes_the_slot_of_a_killed_worker(start, app_file):
    app = app_file(APP)
    run = start("--app", str(app), "--workers", "2", "--spares", "1")
    pids = run.wait_ready(2)
    spare = wait_until(lambda: spares_of(run), 10, "a spare")[0]
    proc = psutil.Process(spare)
    assert " ".join(proc.cmdline()).startswith("unicornish spare app.py")
    # A spare is not a worker: not counted, no after_fork yet.
    assert len(run.workers()) == 2
    assert f" {spare}\n" not in run.stdout()
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: run.worker_pids().get(1) == spare, 5, "the spare as worker[1]")
    assert psutil.Process(spare).name() == "worker[1]"
    wait_until(lambda: f"after_fork 1 {spare}" in run.stdout(), 5, "after_fork in the spare")
    run.wait_log(rf"worker\[1\] spawned pid={spare}")
    # A new spare is forked once the old one is ready.
    wait_until(lambda: [p for p in spares_of(run) if p != spare], 10, "a new spare")
    assert run.worker_pids()[0] == pids[0]
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert spares_of(run) == []


def test_hup_retires_the_old_spare_and_term_stops_spares(start, app_file):
    app = app_file(APP)
    run = start("--app", str(app), "--workers", "1", "--spares", "1")
    run.wait_ready(1)
    old = wait_until(lambda: spares_of(run), 10, "a spare")[0]
    app.write_text(APP.replace("0.05", "0.06"))
    run.signal(signal.SIGHUP)
    run.wait_log(rf"reaped pid={old} spare status=exit 0")
    wait_until(lambda: [p for p in spares_of(run) if p != old], 10, "a spare of the new app")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert spares_of(run) == []
    assert "master exited" in run.log()


def test_no_spare_without_workers_and_none_by_default(start, app_file):
    app = app_file(APP)
    run = start("--app", str(app), "--workers", "0", "--spares", "2")
    run.wait_log("master process ready")
    default = start("--app", str(app), "--workers", "1", log_file=False)
    default.wait_ready(1)
    assert spares_of(run) == [] and spares_of(default) == []
    for r in (run, default):
        r.signal(signal.SIGTERM)
        assert r.wait_exit(10) == 0


def test_a_spare_that_cannot_load_the_app_backs_off(start, app_file, tmp_path):
    app = app_file(APP)
    run = start("--app", str(app), "--workers", "1", "--spares", "1")
    run.wait_ready(1)
    first = wait_until(lambda: spares_of(run), 10, "a spare")[0]
    app.write_text("raise RuntimeError('broken on disk')\n")
    os.kill(first, signal.SIGKILL)
    run.wait_log("spare cannot load app", 2, timeout=10)
    run.wait_log("spare died; forking the next one in")
    assert len(run.workers()) == 1  # the serving worker is untouched
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


# -- log reopening and --max-tasks reach spares too --------------------------------------


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
