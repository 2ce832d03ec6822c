"""Child cgroups a test makes (a CPU quota, a one-CPU cpuset, a memory limit) in
whichever hierarchy has that controller, and a launcher that starts a master
inside them. The `groups` fixture (conftest.py) undoes them at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unicornish.host import cgroups

from .processes import Run

MIB = 1024 * 1024


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


def assert_inside(pids: list[int], group: Group) -> None:
    """The launcher did its job: these processes really run in the group."""
    relative = "/" + group.path.name
    for pid in pids:
        text = Path(f"/proc/{pid}/cgroup").read_text()
        assert relative in text, (pid, text)
