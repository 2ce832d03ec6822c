"""Processes from outside: start bin/unicornish, wait for what it does, look at
its children, and clean up everything a run started.

Every master is started in a session of its own; at the end of each test every
process of that session (and every pid we ever saw as one of its workers) is
SIGKILLed, so a failing test cannot leak a worker into the next one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = ROOT / "bin" / "unicornish"
EXAMPLES = ROOT / "examples"
PY = sys.executable


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "",
    step: float | None = None,
) -> Any:
    """Poll a condition with a deadline (never a bare sleep): every 10 ms at
    first, then less often, up to every 0.1 s; every `step` seconds when given
    (a predicate that counts its looks needs them evenly spaced)."""
    deadline = time.monotonic() + timeout
    delay = step or 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        if step is None:
            delay = min(delay * 1.5, 0.1)


def let_pass(seconds: float) -> None:
    """Let wall time pass (a window must close, signals meant to be apart),
    without a bare sleep."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, seconds + 1, f"{seconds}s to pass")


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (a zombie's parent, maybe this test, has
    not reaped it yet; it runs nothing and holds nothing but its pid)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pid: int) -> bool:
    """Running: there, and not a zombie."""
    return not gone(pid)


def _stat_fields(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode(errors="replace")
    except OSError:
        return None
    head, _, tail = data.rpartition(")")
    comm = head.partition("(")[2]
    parts = tail.split()
    if len(parts) < 2:
        return None
    return comm, parts[0], int(parts[1])


def children(pid: int) -> list[tuple[int, str, str]]:
    """[(child pid, comm, state)] of pid, zombies included, straight from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and fields[2] == pid:
            found.append((int(name), fields[0], fields[1]))
    return found


def worker_children(pid: int) -> list[int]:
    return [c for c, comm, state in children(pid) if comm.startswith("worker[") and state != "Z"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Seen:
    """Pids of processes a run started, each with its start time: pids are
    reused (pid_max is 32768 here), and a cleanup must never kill another
    test's process that got the number of one of ours."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def add(self, pid: int) -> None:
        if pid not in self.started:
            try:
                self.started[pid] = psutil.Process(pid).create_time()
            except psutil.Error:
                pass  # already gone: nothing to clean up

    def update(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.add(pid)

    def __contains__(self, pid: object) -> bool:
        return pid in self.started

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.started))

    def still_ours(self, proc: psutil.Process) -> bool:
        try:
            return proc.create_time() == self.started.get(proc.pid)
        except psutil.Error:
            return False


class Run:
    """One master started from bin/unicornish."""

    def __init__(
        self,
        tmp: Path,
        args: list[str],
        env: dict[str, str] | None,
        log_file: bool,
        cwd: Path | None = None,
        prefix: list[str] | None = None,
        stderr: Any = None,
    ):
        self.tmp = tmp
        self.log_path = tmp / "unicornish.host.log"
        self.out_path = tmp / "stdout.txt"
        self.err_path = tmp / "stderr.txt"
        # prefix: a launcher that execs the rest (the pid stays the master's).
        cmd = [*(prefix or []), str(BIN), *args]
        if log_file:
            cmd += ["--log-file", str(self.log_path)]
        self.cmd = cmd
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err if stderr is None else stderr,
            cwd=str(cwd or tmp),
            env=full_env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.sid = self.pid
        self.seen = Seen()
        self.seen.add(self.pid)  # the session leader: its start time tells our session apart

    # -- reading ---------------------------------------------------------------

    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.err_path):
            try:
                text += path.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 10.0) -> str:
        wait_until(
            lambda: self.count(pattern) >= count,
            timeout,
            f"{count} x {pattern!r} in log:\n{self.log()[-3000:]}",
        )
        return self.log()

    def workers(self) -> list[psutil.Process]:
        """Live (non-zombie) worker processes of this master, by title."""
        found = []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                if child.name().startswith("worker["):
                    found.append(child)
                    self.seen.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def worker_pids(self) -> dict[int, int]:
        """nr -> pid of the live workers."""
        result = {}
        for proc in self.workers():
            try:
                nr = int(proc.name()[7:-1])
            except (ValueError, psutil.NoSuchProcess):
                continue
            result[nr] = proc.pid
        return result

    def wait_workers(self, n: int, timeout: float = 10.0) -> dict[int, int]:
        wait_until(
            lambda: len(self.workers()) == n and len(self.worker_pids()) == n,
            timeout,
            f"{n} workers (have {self.worker_pids()}); log:\n{self.log()[-3000:]}",
        )
        return self.worker_pids()

    def wait_ready(self, n: int, timeout: float = 10.0) -> dict[int, int]:
        self.wait_log(r"worker\[\d+\] ready", n, timeout)
        return self.wait_workers(n, timeout)

    # -- acting ------------------------------------------------------------------

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.log()[-3000:]
            raise AssertionError(f"master still running after {timeout}s:\n{tail}") from None

    def session_pids(self) -> list[int]:
        # Once our master is reaped its number may go to another test's master,
        # which leads a session of the same number: that one is not ours.
        try:
            if not self.seen.still_ours(psutil.Process(self.sid)):
                return []
        except psutil.NoSuchProcess:
            pass  # the leader is gone; a session number is not reused while members live
        pids = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == self.sid:
                    pids.append(proc.pid)
            except OSError:
                continue
        return pids

    def cleanup(self) -> list[int]:
        """Kill everything this run started; return what was still alive."""
        leaked = []
        session = set(self.session_pids())
        for pid in session | set(self.seen):
            try:
                proc = psutil.Process(pid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if pid not in session and not self.seen.still_ours(proc):
                    continue  # a reused number: another test's process
                leaked.append(pid)
                os.kill(pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError, OSError):
                continue
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()
        self._err.close()
        return leaked


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 20.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run bin/unicornish to completion (for bad-input cases)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd) if cwd else None,
        env=full_env,
        start_new_session=True,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The bad-input contract: exit code, one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unicornish: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def new_master(run: Run, nth: int = 1, timeout: float = 10.0) -> int:
    """The pid of the nth new master this log has seen started by USR2."""
    log = run.wait_log(r"USR2: started new master pid=\d+", nth, timeout)
    pid = int(re.findall(r"USR2: started new master pid=(\d+)", log)[nth - 1])
    run.seen.add(pid)
    return pid


def stop_master(pid: int) -> None:
    """QUIT a master that is not our child and wait until it is gone."""
    if alive(pid):
        os.kill(pid, signal.SIGQUIT)
    wait_until(lambda: gone(pid), 10, f"master {pid} to exit")


def unshare_or_skip() -> str:
    """unshare(1), when this kernel lets us make a pid namespace; else skip the test."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"the kernel refuses a pid namespace here: {probe.stderr.strip()}")
    return unshare
