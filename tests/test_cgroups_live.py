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
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import Run, wait_until

from unicornish.host import cgroups

MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")

APP = """
import time
def worker_start(worker):
    time.sleep(0.05)
"""

# Joins every group named before "--" (so the master and its workers are born
# there), then execs the rest: the pid Run started is still the master's.
LAUNCHER = textwrap.dedent(
    """
    import os, sys
    end = sys.argv.index("--")
    for procs in sys.argv[1:end]:
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))
    os.execv(sys.argv[end + 1], sys.argv[end + 1 :])
    """
)


@dataclass
class Group:
    """A child cgroup made by a test: one controller, in the hierarchy that has it."""

    controller: str
    version: int
    path: Path

    def write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def pids(self) -> set[int]:
        try:
            return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        except (FileNotFoundError, ValueError):
            return set()

    @property
    def procs(self) -> str:
        return str(self.path / "cgroup.procs")


def _v2_ready(parent: Path, controller: str) -> str | None:
    """A v2 child gets a controller only if its parent hands it down; why not, if not."""
    available = (parent / "cgroup.controllers").read_text().split()
    if controller not in available:
        return f"cgroup v2: no {controller} controller in {parent}/cgroup.controllers"
    if controller in (parent / "cgroup.subtree_control").read_text().split():
        return None
    try:
        (parent / "cgroup.subtree_control").write_text(f"+{controller}")
    except OSError as exc:  # a parent with processes of its own cannot (no internal tasks)
        return f"cgroup v2: cannot enable {controller} below {parent}: {exc.strerror}"
    return None


@dataclass
class Groups:
    """The groups and processes of one test, all undone at teardown."""

    start: Callable[..., Run]
    made: list[Group] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def make(self, controller: str) -> Group:
        # Below our own group: a parent's limits (a CI job's) then still hold, and we
        # never touch a group we did not make.
        place = cgroups.current().place(controller)
        if place is None:
            pytest.skip(f"no cgroup hierarchy with the {controller} controller on this host")
        parent = Path(place.directory)
        if place.version == 2:
            why = _v2_ready(parent, controller)
            if why:
                pytest.skip(why)
        group = Group(controller, place.version, parent / f"unicornish-test-{uuid.uuid4().hex[:8]}")
        group.path.mkdir()
        self.made.append(group)
        return group

    def launcher(self, groups: list[Group]) -> list[str]:
        return [sys.executable, "-c", LAUNCHER, *(g.procs for g in groups), "--"]

    def start_master(self, groups: list[Group], *args: str) -> Run:
        run = self.start(*args, prefix=self.launcher(groups))
        self.runs.append(run)
        return run

    def popen(self, groups: list[Group], code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*self.launcher(groups), sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,  # its own session: teardown kills only it
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        ours = {run.sid for run in self.runs} | {proc.pid for proc in self.procs}
        for run in self.runs:
            run.cleanup()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            if proc.stdout:
                proc.stdout.close()
        for group in reversed(self.made):
            _empty_and_remove(group, ours)


def _empty_and_remove(group: Group, sessions: set[int]) -> None:
    """Kill what is left in the group if it is ours (by session), then rmdir it.

    rmdir fails while a task is still leaving the group, so it is retried."""
    for pid in group.pids():
        try:
            if os.getsid(pid) in sessions:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    deadline = time.monotonic() + 10
    while True:
        try:
            group.path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def groups(start: Callable[..., Run]) -> Iterator[Groups]:
    # Depends on `start`, so this teardown (kill, rmdir) runs before start's.
    made = Groups(start)
    try:
        yield made
    finally:
        made.cleanup()


# -- setting limits in either hierarchy -------------------------------------------------


def set_cpu_quota(group: Group, quota: int, period: int) -> None:
    if group.version == 2:
        group.write("cpu.max", f"{quota} {period}")
    else:
        group.write("cpu.cfs_period_us", str(period))
        group.write("cpu.cfs_quota_us", str(quota))


def set_one_cpu(group: Group) -> int:
    cpu = min(os.sched_getaffinity(0))
    mems = Path(
        group.path.parent / ("cpuset.mems" if group.version == 1 else "cpuset.mems.effective")
    )
    group.write("cpuset.cpus", str(cpu))
    # v1 refuses tasks in a cpuset without memory nodes; take the parent's first.
    first_mem = mems.read_text().strip().split(",")[0].split("-")[0] or "0"
    group.write("cpuset.mems", first_mem)
    return cpu


def set_memory_limit(group: Group, nbytes: int) -> None:
    if group.version == 2:
        group.write("memory.max", str(nbytes))
        if group.has("memory.swap.max"):
            group.write("memory.swap.max", "0")
        return
    group.write("memory.limit_in_bytes", str(nbytes))
    # With swap, the kernel would page out rather than OOM-kill: count swap in too.
    if group.has("memory.memsw.limit_in_bytes"):
        group.write("memory.memsw.limit_in_bytes", str(nbytes))
    if group.has("memory.swappiness"):
        group.write("memory.swappiness", "0")


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


def assert_inside(pids: list[int], group: Group) -> None:
    """The launcher did its job: these processes really run in the group."""
    relative = "/" + group.path.name
    for pid in pids:
        text = Path(f"/proc/{pid}/cgroup").read_text()
        assert relative in text, (pid, text)


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
