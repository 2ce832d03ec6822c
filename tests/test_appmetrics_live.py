"""App metrics through a real master: workers count into their arenas, the master sums
them, and counters survive a kill -9 and --max-tasks recycles.

The HTTP endpoint is not part of this: a config file's `before_fork` hook, which runs
inside the master before each fork, finds the master's collectors and writes what a
scrape would return to scrape-N.txt. So every fork (a start, a TTIN, a respawn) is a
scrape, taken at a moment the test chooses."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from helpers import SCRAPING_CONFIG, Run, run_cli, scrape, wait_until

pytest.importorskip("prometheus_client")


# Declared at import: in the master with --preload, in each worker without.
AT_IMPORT = """
import time
from unicornish.metrics import appmetrics
JOBS = appmetrics.counter("jobs", "Jobs done", labels={"kind": ["a", "b"]})
UP = appmetrics.gauge("up", "Workers up")
LATENCY = appmetrics.histogram("task_seconds", "Task time", buckets=[0.001, 1])

def after_fork(worker):
    UP.set(1)

def worker_start(worker):
    JOBS.labels(kind="a").inc()
    LATENCY.observe(0.5)
    time.sleep(0.01)
"""

# Declared through worker.metrics once the worker runs.
IN_AFTER_FORK = """
import time
metrics = {}

def after_fork(worker):
    metrics["jobs"] = worker.metrics.counter("jobs", "Jobs done", labels={"kind": ["a", "b"]})
    worker.metrics.gauge("up", "Workers up").set(1)
    metrics["latency"] = worker.metrics.histogram("task_seconds", "Task time", buckets=[0.001, 1])

def worker_start(worker):
    metrics["jobs"].labels(kind="a").inc()
    metrics["latency"].observe(0.5)
    time.sleep(0.01)
"""


def start_scraped(start, tmp: Path, app: str, *args: str) -> Run:
    (tmp / "app.py").write_text(app)
    (tmp / "conf.py").write_text(SCRAPING_CONFIG)
    return start("-c", "conf.py", *args)


@pytest.mark.parametrize(
    "app, args",
    [(AT_IMPORT, ["--preload"]), (AT_IMPORT, []), (IN_AFTER_FORK, [])],
    ids=["preload-import", "import-in-worker", "worker.metrics-in-after_fork"],
)
def test_workers_are_summed_and_counters_survive_a_kill(start, tmp_path, app, args):
    run = start_scraped(start, tmp_path, app, "--workers", "2", *args)
    pids = run.wait_ready(2)  # scrapes 1 and 2 were taken before the two forks
    run.signal(signal.SIGTTIN)  # scrape 3, then worker[2]
    first = scrape(tmp_path, 3)
    assert first['jobs_total{kind="a"}'] > 0
    assert first['jobs_total{kind="b"}'] == 0  # declared up front, never counted
    assert first["up"] == 2
    # One observation per job, but a worker may be between the two updates.
    assert abs(first["task_seconds_count"] - first['jobs_total{kind="a"}']) <= 2
    assert first['task_seconds_bucket{le="0.001"}'] == 0
    run.wait_ready(3)
    run.wait_log(r"worker\[2\] ready")
    victim = pids[0]  # a worker of our own master
    os.kill(victim, signal.SIGKILL)
    run.wait_log(rf"reaped pid={victim} worker\[0\] status=killed by SIGKILL")
    after = scrape(tmp_path, 4)  # taken before the replacement's fork
    assert after['jobs_total{kind="a"}'] >= first['jobs_total{kind="a"}']
    assert after["task_seconds_count"] >= first["task_seconds_count"]
    assert after["up"] == 2  # the dead worker's gauge is gone; 1 and 2 remain
    assert after['unicornish_worker_exits_total{cause="signal"}'] == 1
    assert sum(v for k, v in after.items() if k.startswith("unicornish_worker_exits")) == 1
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_recycled_workers_counts_are_kept(start, tmp_path):
    # Each worker recycles after 20-22 tasks: the total can only be the sum of all of them.
    run = start_scraped(start, tmp_path, AT_IMPORT, "--workers", "2", "--max-tasks", "20")
    run.wait_log(r"recycled after \d+ tasks \(--max-tasks\)", 4, timeout=20)
    n = len(list(tmp_path.glob("scrape-*.txt")))
    wait_until(lambda: (tmp_path / f"scrape-{n + 1}.txt").exists(), 10, "the next scrape")
    found = scrape(tmp_path, n + 1)
    recycled = found['unicornish_worker_exits_total{cause="max_tasks"}']
    assert recycled >= 4
    assert found['jobs_total{kind="a"}'] >= 20 * recycled
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_too_many_series_stop_the_start_with_one_line(tmp_path):
    (tmp_path / "app.py").write_text(
        "from unicornish import appmetrics\n"
        "appmetrics.counter('wide', 'help', labels={'n': [str(i) for i in range(600)]})\n"
        "def worker_start(worker):\n    pass\n"
    )
    result = run_cli("--app", "app.py", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"limit of 512 series per worker", lines[0]), lines


def test_a_spare_that_takes_a_slot_counts_in_its_own_arena(start, tmp_path):
    args = ["--workers", "2", "--spares", "1", "--preload"]
    run = start_scraped(start, tmp_path, AT_IMPORT, *args)
    pids = run.wait_ready(2)
    run.wait_log(r"spare spawned pid=")
    forks = len(list(tmp_path.glob("scrape-*.txt")))  # each fork so far left one
    assert forks == 3
    os.kill(pids[0], signal.SIGKILL)  # a worker of our own master
    run.wait_log(r"worker\[0\] spawning\.\. \(a spare takes the slot\)")
    # The next spare is forked once the one that took the slot is ready: scrape 4
    # sees that worker's after_fork gauge, which it wrote in the spare's arena.
    found = scrape(tmp_path, forks + 1)
    assert found["up"] == 2
    assert found['unicornish_worker_exits_total{cause="signal"}'] == 1
    assert found['jobs_total{kind="a"}'] > 0
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
