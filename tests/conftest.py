"""Real processes, real signals: start bin/unicornish, read its log, look at its children.

Every master is started in a session of its own; at the end of each test every
process of that session (and every pid we ever saw as one of its workers) is
SIGKILLed, so a failing test cannot leak a worker into the next one.

The helpers that test files share (wait_until, gone, run_cli, the apps that
several files run...) live here too, next to the Run they go with; a test file
takes them with `from conftest import ...`, as pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin" / "unicornish"
EXAMPLES = ROOT / "examples"


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/chaos/conftest.py, which pytest reads only once it
    # collects tests/chaos: too late for a bare `pytest --soak` from the root.
    group = parser.getgroup("unicornish chaos")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="long chaos and leak runs; their figures go into docs/RELIABILITY.md",
    )
    group.addoption(
        "--soak-seconds",
        type=float,
        default=90.0,
        help="how long each chaos scenario runs under --soak (default 90)",
    )


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll a condition with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


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


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def _start(
        *args: str,
        env: dict[str, str] | None = None,
        log_file: bool = True,
        cwd: Path | None = None,
        prefix: list[str] | None = None,
    ) -> Run:
        run = Run(tmp_path, list(args), env, log_file, cwd, prefix)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        run.cleanup()


# -- apps that tests in more than one file run ------------------------------------------


def loop_app(task: float = 0.05) -> str:
    """Workers that just keep going: each task is a sleep of `task` seconds."""
    return f"""
import time
def worker_start(worker):
    time.sleep({task})
"""


def slow_task_app(task: float = 1.5) -> str:
    """Tasks long enough to be caught in the middle: each prints `task start PID`, then,
    unless it is cut short, `task done PID` `task` seconds later."""
    return f"""
import os, time
def worker_start(worker):
    print(f"task start {{os.getpid()}}", flush=True)
    time.sleep({task})
    print(f"task done {{os.getpid()}}", flush=True)
"""


def write_app(tmp: Path, source: str, name: str = "app.py") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def app_file(tmp_path: Path) -> Callable[..., Path]:
    def _make(source: str, name: str = "app.py") -> Path:
        return write_app(tmp_path, source, name)

    return _make


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


PY = sys.executable


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB filesystem (tmpfs), to fill up."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        # Lazy: a master that is still being cleaned up may hold the log open.
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler
