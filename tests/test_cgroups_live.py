"""--workers auto inside REAL cgroups: each test makes child groups of its own (a CPU
quota, a one-CPU cpuset, a memory limit) in whichever hierarchy has that controller,
starts bin/unicornish inside them through a launcher that joins the groups and then
execs, and counts the master's workers with psutil. And the OOM kill counter of a
real memory group, read after the kernel killed a process in it.

Needs root (to make groups). A controller that no hierarchy offers skips only its
cases, with the reason. Teardown kills what these tests started, then removes the
groups, even when a test failed.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from helpers import (
    MIB,
    Run,
    assert_inside,
    loop_app,
    set_cpu_quota,
    set_memory_limit,
    set_one_cpu,
    wait_until,
)

from unicornish.host import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")

APP = loop_app()


# -- setting limits in either hierarchy -------------------------------------------------


# -- reading what the master did ------------------------------------------------------


def auto_line(run: Run, count: int = 1) -> str:
    """The count-th `workers auto = N (why)` line of the log."""
    run.wait_log(r"workers auto = \d+ \(", count)
    lines = [line for line in run.log().splitlines() if "workers auto = " in line]
    return lines[count - 1]


def settle(run: Run, n: int) -> list[int]:
    """Exactly n workers, ready, and still n a moment later (no late extra spawn)."""
    run.wait_ready(n)
    until = time.monotonic() + 0.5
    wait_until(lambda: time.monotonic() >= until, 2)
    workers = run.workers()
    assert len(workers) == n, (workers, run.log()[-2000:])
    return [proc.pid for proc in workers]


def needs_cpus(n: int) -> None:
    if cgroups.affinity_cpus() < n:
        pytest.skip(f"needs {n} CPUs to tell the limit from the CPU count")


# -- the tests -------------------------------------------------------------------------------


def test_cpu_quota_of_one_and_a_half_cpus_starts_two_workers(groups, app_file):
    needs_cpus(2)
    app_file(APP)
    cpu = groups.make("cpu")
    set_cpu_quota(cpu, 150000, 100000)
    run = groups.start_master([cpu], "--app", "app.py", "--workers", "auto")
    assert "workers auto = 2 (cgroup cpu quota 150000/100000)" in auto_line(run)
    workers = settle(run, 2)
    assert_inside([run.pid, *workers], cpu)


def test_cpu_quota_of_half_a_cpu_starts_one_worker(groups, app_file):
    needs_cpus(2)
    app_file(APP)
    cpu = groups.make("cpu")
    set_cpu_quota(cpu, 50000, 100000)
    run = groups.start_master([cpu], "--app", "app.py", "--workers", "auto")
    assert "workers auto = 1 (cgroup cpu quota 50000/100000)" in auto_line(run)
    settle(run, 1)


def test_cpuset_of_one_cpu_starts_one_worker(groups, app_file):
    needs_cpus(2)
    app_file(APP)
    cpuset = groups.make("cpuset")
    set_one_cpu(cpuset)
    run = groups.start_master([cpuset], "--app", "app.py", "--workers", "auto")
    assert "workers auto = 1 (cpuset/affinity: 1 CPU)" in auto_line(run)
    workers = settle(run, 1)
    assert_inside([run.pid, *workers], cpuset)
    assert len(psutil.Process(workers[0]).cpu_affinity()) == 1


@pytest.mark.parametrize("worker_mb, expected", [(100, 2), (200, 1)])
def test_memory_limit_caps_workers(groups, app_file, worker_mb, expected):
    needs_cpus(2)
    app_file(APP)
    memory = groups.make("memory")
    set_memory_limit(memory, 256 * MIB)
    args = ["--app", "app.py", "--workers", "auto", "--worker-memory", str(worker_mb)]
    run = groups.start_master([memory], *args)
    line = auto_line(run)
    assert f"workers auto = {expected} (" in line
    assert f"memory limit 256 MiB / --worker-memory {worker_mb})" in line
    workers = settle(run, expected)
    assert_inside([run.pid, *workers], memory)


def test_hup_reads_the_quota_again(groups, app_file, tmp_path):
    needs_cpus(2)
    app_file(APP)
    (tmp_path / "conf.py").write_text('app = "app.py"\nworkers = "auto"\n')
    cpu = groups.make("cpu")
    set_cpu_quota(cpu, 50000, 100000)
    run = groups.start_master([cpu], "-c", "conf.py")
    assert "workers auto = 1 (cgroup cpu quota 50000/100000)" in auto_line(run)
    settle(run, 1)
    set_cpu_quota(cpu, 150000, 100000)  # the container was given more CPU
    run.signal(signal.SIGHUP)
    assert "workers auto = 2 (cgroup cpu quota 150000/100000)" in auto_line(run, 2)
    settle(run, 2)


HOG = """
import time
chunks = []
for _ in range(1024):  # up to 1 GiB, each MiB written (untouched pages cost nothing)
    chunks.append(b"x" * (1024 * 1024))
print("survived", flush=True)
"""

BYSTANDER = """
import time
print("up", flush=True)
time.sleep(120)
"""

REPORT = "from unicornish.host import cgroups; print(cgroups.oom_kills())"


def test_oom_kill_is_counted_in_a_real_memory_group(groups):
    memory = groups.make("memory")
    set_memory_limit(memory, 64 * MIB)
    before = cgroups.oom_kills_at(str(memory.path), memory.version)
    if before is None:
        pytest.skip(f"this kernel counts no oom_kill in {memory.path} (Linux < 4.13)")
    assert before == 0
    bystander = groups.popen([memory], BYSTANDER)
    assert bystander.stdout is not None and bystander.stdout.readline() == b"up\n"
    hog = groups.popen([memory], HOG)
    out, _ = hog.communicate(timeout=60)
    assert hog.returncode == -signal.SIGKILL, (hog.returncode, out)
    assert out == b""
    # Only the hog died: the kernel picked the biggest task of that group alone.
    assert bystander.poll() is None
    assert cgroups.oom_kills_at(str(memory.path), memory.version) == 1
    # And a process in the group finds the count through its own /proc/self/cgroup.
    report = groups.popen([memory], REPORT)
    out, _ = report.communicate(timeout=30)
    assert report.returncode == 0 and out.strip() == b"1"
