"""Process plumbing for the bench: readiness sockets, reaping, exit watching, cleanup.

Every master the bench starts runs in its own session (so its process group
id is its pid), and every group is SIGKILLed when the bench ends, whatever
the reason. The bench makes itself a child subreaper, so workers orphaned by
a killed master are reparented to it and reaped here instead of lingering
as zombies under a pid 1 that may not reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """A scenario could not complete (timeout, peer crashed...)."""


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except OSError:
        return False


# -- reaping -------------------------------------------------------------------


class Reaper:
    """Reaps every child of the bench (masters, and orphaned workers) in a thread.

    subprocess.Popen.wait() is never used: exit statuses land in `statuses`.
    """

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.05)
                continue
            except InterruptedError:
                continue
            self.statuses[pid] = status

    def wait_reaped(self, pid: int, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pid in self.statuses:
                return self.statuses[pid]
            time.sleep(0.005)
        return None


# -- readiness messages ----------------------------------------------------------


@dataclass
class Msg:
    kind: str
    pid: int
    t: float  # the sender's CLOCK_MONOTONIC
    extra: list[str]
    recv: float  # ours, when we read it


@dataclass
class Inbox:
    path: str
    sock: socket.socket
    msgs: list[Msg] = field(default_factory=list)


class Announcements:
    """One thread reading every master's readiness socket.

    Each master gets its own unix datagram socket (its path goes to the
    master's environment as BENCH_READY_SOCK), so messages never mix.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._poll = select.epoll()
        self._by_fd: dict[int, Inbox] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.EPOLLIN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="announcements", daemon=True)
        self._thread.start()

    def open(self, path: str) -> Inbox:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(path)
        s.setblocking(False)
        box = Inbox(path, s)
        with self._cond:
            self._by_fd[s.fileno()] = box
        self._poll.register(s.fileno(), select.EPOLLIN)
        return box

    def close(self, box: Inbox) -> None:
        with self._cond:
            self._by_fd.pop(box.sock.fileno(), None)
        with contextlib.suppress(OSError):
            self._poll.unregister(box.sock.fileno())
        box.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(box.path)

    def _run(self) -> None:
        while not self._stop:
            try:
                events = self._poll.poll(1.0)
            except InterruptedError:
                continue
            now = time.monotonic()
            got = False
            for fd, _ev in events:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                    continue
                with self._cond:
                    box = self._by_fd.get(fd)
                if box is None:
                    continue
                while True:
                    try:
                        data = box.sock.recv(512)
                    except (BlockingIOError, OSError):
                        break
                    parts = data.decode(errors="replace").split()
                    if len(parts) < 3:
                        continue
                    try:
                        msg = Msg(parts[0], int(parts[1]), float(parts[2]), parts[3:], now)
                    except ValueError:
                        continue
                    with self._cond:
                        box.msgs.append(msg)
                    got = True
            if got:
                with self._cond:
                    self._cond.notify_all()

    def wait(self, box: Inbox, pred: Callable[[list[Msg]], object], timeout: float) -> object:
        """Block until pred(box.msgs) is truthy; return it, or raise BenchError."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred(box.msgs)
                if value:
                    return value
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(f"timed out after {timeout:g}s waiting for workers")
                self._cond.wait(min(left, 0.5))

    def shutdown(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")


def ready_pids(msgs: Iterable[Msg], since: int = 0) -> dict[int, float]:
    """pid -> ready time, for 'ready' messages from index `since` on."""
    out: dict[int, float] = {}
    for m in list(msgs)[since:]:
        if m.kind == "ready" and m.pid not in out:
            out[m.pid] = m.t
    return out


# -- exits ---------------------------------------------------------------------------


def pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def wait_exits(fds: dict[int, int | None], timeout: float) -> dict[int, float | None]:
    """pid -> monotonic time we saw it exit (None: still running at timeout).

    `fds` maps pid -> pidfd (opened while the process was surely alive). A
    pidfd turns readable the moment the process exits (before it is reaped).
    A pid whose pidfd could not be opened had already exited: its time is 0.
    """
    out: dict[int, float | None] = {}
    poller = select.poll()
    live: dict[int, int] = {}
    for pid, fd in fds.items():
        if fd is None:
            out[pid] = 0.0
        else:
            poller.register(fd, select.POLLIN)
            live[fd] = pid
    end = time.monotonic() + timeout
    while live:
        left = end - time.monotonic()
        if left <= 0:
            break
        for fd, _ev in poller.poll(left * 1000):
            now = time.monotonic()
            pid = live.pop(fd, None)
            if pid is not None:
                out[pid] = now
                poller.unregister(fd)
    for pid in live.values():
        out[pid] = None
    for fd in fds.values():
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    return out


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def children_of(ppid: int) -> list[int]:
    """Live children of ppid, from /proc (this kernel has no /proc/PID/task/*/children)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] not in "ZX" and int(rest[1]) == ppid:
            out.append(int(name))
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid, in seconds (from schedstat, ns resolution)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


# -- sessions ------------------------------------------------------------------------


def session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process in session sid, zombies included.

    Masters are started with start_new_session=True, so the session id is the
    master's pid. unicornish puts each worker in a process group of its own,
    so a killpg() of the master's group would miss them; the session catches all.
    """
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if int(rest[3]) == sid:
            out.append((int(name), rest[0]))
    return out


class Sessions:
    """Every session the bench started; all their processes are SIGKILLed at the end."""

    def __init__(self) -> None:
        self.sids: set[int] = set()
        self.lock = threading.Lock()

    def add(self, sid: int) -> None:
        with self.lock:
            self.sids.add(sid)

    def kill(self, sid: int, timeout: float = 10.0) -> bool:
        """SIGKILL every process of a session, then wait until none is left (reaped)."""
        end = time.monotonic() + timeout
        while True:
            members = session_members(sid)
            if not members:
                with self.lock:
                    self.sids.discard(sid)
                return True
            for pid, state in members:
                if state not in "ZX":
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > end:
                return False
            time.sleep(0.01)

    def kill_all(self) -> None:
        with self.lock:
            sids = list(self.sids)
        for sid in sids:
            self.kill(sid, timeout=5.0)


# -- statistics ------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile (statistics.quantiles' 'inclusive')."""
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": percentile(xs, 0.5),
        "p90": percentile(xs, 0.9),
        "max": max(xs) if xs else float("nan"),
        "mean": statistics.fmean(xs) if xs else float("nan"),
    }
