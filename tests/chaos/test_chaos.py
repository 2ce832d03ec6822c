"""Chaos (issue 7): SIGKILL random workers many times a second while TTIN, TTOU,
HUP, USR1 and WINCH hit the master in random order; with and without
--preload, and with a listener under a client's load.

At the end the master must have exactly the workers it was asked for, no
zombie, the same open fds and threads as at the start, almost the same
memory, no traceback in its log and, with the listener, no failed request
but those whose worker was SIGKILLed in the middle of them.

Short runs (a few seconds each) are part of `make check`; `make soak` runs
each scenario for --soak-seconds and writes the figures into
docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import NotifyListener, free_port, loop_app, wait_until, worker_children
from reliability import log_tracebacks, snapshot, zombies

# Says which worker took the connection first, so that a lost request can be
# matched against the SIGKILLs the test sent.
SERVER_APP = """
import os, time
def worker_start(worker):
    got = worker.accept()
    if got is None:
        return
    conn, _ = got
    with conn:
        conn.settimeout(5)
        conn.sendall(b"%d\\n" % os.getpid())
        data = b""
        while not data.endswith(b"\\n"):
            chunk = conn.recv(256)
            if not chunk:
                return
            data += chunk
        time.sleep(0.002)
        conn.sendall(b"ok " + data)
"""

SIGNALS = {
    "TTIN": signal.SIGTTIN,
    "TTOU": signal.SIGTTOU,
    "HUP": signal.SIGHUP,
    "USR1": signal.SIGUSR1,
    "WINCH": signal.SIGWINCH,
}
MAX_WORKERS = 7
WANTED_LINE = re.compile(
    r"(TTIN|TTOU|WINCH): (\d+) workers wanted|(HUP) received"
    r"|(reload failed): new worker\[\d+\] exited before it was ready|(reload done)"
)


def wanted_from_log(text: str, configured: int) -> int:
    """The worker count the master last said it wants, in the order it acted
    (mirroring Master.reload and abort_reload: an aborted reload puts back the
    count of the last proven release - a HUP during a reload keeps that one -
    unless TTIN/TTOU changed the count since)."""
    wanted = rollback = configured
    reloading = False
    for match in WANTED_LINE.finditer(text):
        if match.group(3):
            if not reloading:
                rollback = wanted
            reloading = True
            wanted = configured
        elif match.group(4):
            if wanted == configured:
                wanted = rollback
            reloading = False
        elif match.group(5):
            reloading = False
        else:
            wanted = int(match.group(2))
    return wanted


@dataclass
class Requests:
    """A client's load on the listener: back-to-back requests from a few threads."""

    address: tuple[str, int]
    ok: int = 0
    failures: list[tuple[int | None, float, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)
    counter: int = 0

    def start(self, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive(), "a client thread is stuck"

    def _loop(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.counter += 1
                n = self.counter
            self._one(n)

    def _one(self, n: int) -> None:
        started = time.monotonic()
        pid: int | None = None
        try:
            with socket.create_connection(self.address, timeout=20) as conn:
                reader = conn.makefile("rb")
                hello = reader.readline()
                if not hello:
                    raise ConnectionError("closed before the worker said hello")
                pid = int(hello)
                request = b"req %d\n" % n
                conn.sendall(request)
                reply = reader.readline()
                if reply != b"ok " + request:
                    raise ConnectionError(f"bad reply {reply!r}")
        except (OSError, ValueError) as exc:
            with self.lock:
                self.failures.append((pid, started, time.monotonic(), repr(exc)))
            return
        with self.lock:
            self.ok += 1


@dataclass
class Chaos:
    master: int
    configured: int
    rng: random.Random
    keep_one: bool = False
    kills: int = 0
    killed: dict[int, float] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    estimate: int = 0

    def pick_signal(self) -> str:
        name = self.rng.choice(list(SIGNALS))
        if name == "TTIN" and self.estimate >= MAX_WORKERS:
            name = "TTOU"
        if self.keep_one and self.estimate <= 1 and name in ("TTOU", "WINCH"):
            name = self.rng.choice(["TTIN", "HUP"])
        return name

    def run(self, seconds: float) -> None:
        self.estimate = self.configured
        now = time.monotonic()
        end = now + seconds
        next_kill = now
        next_signal = now + 0.05
        while now < end:
            if now >= next_kill:
                pids = worker_children(self.master)
                if pids:
                    victim = self.rng.choice(pids)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        self.kills += 1
                        self.killed[victim] = now
                    except ProcessLookupError:
                        pass
                next_kill = now + self.rng.uniform(0.01, 0.08)
            if now >= next_signal:
                name = self.pick_signal()
                os.kill(self.master, SIGNALS[name])
                self.sent[name] += 1
                if name == "TTIN":
                    self.estimate += 1
                elif name == "TTOU":
                    self.estimate = max(0, self.estimate - 1)
                elif name == "WINCH":
                    self.estimate = 0
                elif name == "HUP":
                    self.estimate = self.configured
                next_signal = now + self.rng.uniform(0.05, 0.3)
            time.sleep(max(0.0, min(next_kill, next_signal, end) - time.monotonic()))
            now = time.monotonic()


def settle(run: Any, configured: int, timeout: float = 25.0) -> int:
    """Wait until the master has exactly the workers it last said it wants,
    for 1.2 s of looks in a row; return that count. Longer than the 1 s for
    which a HUP right after a reload is held back: the last HUP of the chaos
    may reload (and set the count back) up to a second after it was sent."""

    def converged() -> bool:
        wanted = wanted_from_log(run.log(), configured)
        return len(worker_children(run.pid)) == wanted and not zombies(run.pid)

    streak = 0

    def stable() -> bool:
        nonlocal streak
        streak = streak + 1 if converged() else 0
        return streak >= 12

    wait_until(
        stable, timeout, f"the worker count to settle; log tail:\n{run.log()[-2000:]}", step=0.1
    )
    return wanted_from_log(run.log(), configured)


def back_to_configured(run: Any, configured: int) -> None:
    """HUP: the count goes back to the configured one and every worker is new and ready."""
    done = run.count(r"reload done")
    run.signal(signal.SIGHUP)
    wait_until(
        lambda: run.count(r"reload done") > done, 25, f"reload done:\n{run.log()[-2000:]}", 0.02
    )
    wait_until(
        lambda: len(worker_children(run.pid)) == configured and not zombies(run.pid),
        25,
        f"{configured} workers and no zombie after HUP",
        0.05,
    )


class ControlClient:
    """`status` requests on the control socket in a loop (and some garbage)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ok = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            garbage = n % 7 == 0
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(10)
                    sock.connect(self.path)
                    sock.sendall(b'{"command": 1}\n' if garbage else b"status\nstatus\n")
                    reader = sock.makefile("rb")
                    for _ in range(1 if garbage else 2):
                        reply = json.loads(reader.readline())
                        if reply.get("ok") is garbage:
                            self.errors.append(repr(reply)[:200])
                        else:
                            self.ok += 1
            except (OSError, ValueError) as exc:
                self.errors.append(repr(exc))
            self.stop.wait(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


SCENARIOS = {
    "plain": {"preload": False, "listen": False, "workers": 4},
    # With the control socket busy and systemd's notify socket listening.
    "preload": {"preload": True, "listen": False, "workers": 4, "control": True},
    "listener": {"preload": False, "listen": True, "workers": 3},
}


@pytest.fixture
def on_teardown():
    """Stop the client threads even when an assertion ends the test early."""
    calls: list[Any] = []
    yield calls.append
    for call in calls:
        call()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_chaos(
    start, app_file, tmp_path: Path, scenario: str, soak: bool, soak_seconds: float, on_teardown
):
    spec = SCENARIOS[scenario]
    configured = int(spec["workers"])
    seconds = soak_seconds if soak else 5.0
    app = app_file(SERVER_APP if spec["listen"] else loop_app(0.01))
    args = ["--app", str(app), "--workers", str(configured), "--graceful-timeout", "5"]
    port = 0
    if spec["preload"]:
        args.append("--preload")
    if spec["listen"]:
        port = free_port()
        args += ["--listen", f"127.0.0.1:{port}"]
    env = None
    notify = control = None
    if spec.get("control"):
        args += ["--control", str(tmp_path / "ctl.sock")]
        notify = NotifyListener(tmp_path / "notify.sock")
        on_teardown(notify.close)
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    run = start(*args, env=env)
    run.wait_ready(configured, timeout=20)
    seed = int(time.time())
    rng = random.Random(seed)

    # Warm up (first HUP, first crash-loop message...), then take the baseline.
    warm = Chaos(run.pid, configured, rng, keep_one=bool(spec["listen"]))
    warm.run(1.0 if not soak else 5.0)
    settle(run, configured)
    back_to_configured(run, configured)
    before = snapshot(run.pid)
    spawned_before = run.count(r"spawned pid=")

    requests = None
    if spec["listen"]:
        requests = Requests(("127.0.0.1", port))
        on_teardown(requests.stop.set)
        requests.start(4)
    if spec.get("control"):
        control = ControlClient(str(tmp_path / "ctl.sock"))
        on_teardown(control.stop.set)
        control.thread.start()
    chaos = Chaos(run.pid, configured, rng, keep_one=bool(spec["listen"]))
    started = time.monotonic()
    chaos.run(seconds)
    elapsed = time.monotonic() - started
    asked = settle(run, configured)
    wanted_after_chaos = len(worker_children(run.pid))
    back_to_configured(run, configured)
    if requests is not None:
        requests.finish()
    if control is not None:
        control.finish()
    # A control client that just hung up may take the master one turn to close.
    wait_until(
        lambda: snapshot(run.pid)["fd_targets"] == before["fd_targets"],
        5,
        "the fds to settle",
        0.02,
    )
    after = snapshot(run.pid)
    log = run.log()
    respawns = run.count(r"spawned pid=") - spawned_before

    # The worker count is what was asked, before and after the final HUP.
    assert wanted_after_chaos == asked
    assert len(worker_children(run.pid)) == configured
    assert zombies(run.pid) == []
    # Nothing leaked in the master.
    assert after["fd_targets"] == before["fd_targets"], (before, after)
    assert after["threads"] == before["threads"] == 1
    growth = after["rss"] - before["rss"]
    bound = (8 if soak else 4) * 1024 * 1024
    assert growth < bound, f"master RSS grew by {growth} bytes"
    assert log_tracebacks(log) == []
    # USR1 makes the master reopen its log once per signal at most (signals merge);
    # more would mean a signal fed back into the master's wake-up pipe.
    sent_usr1 = warm.sent["USR1"] + chaos.sent["USR1"]
    assert run.count(r"reopened log files") <= sent_usr1
    # At least 3 kills a second: fewer means the chaos did not happen. (After a
    # WINCH there is nothing to kill until a TTIN or a HUP, and HUPs less than a
    # second apart merge into one reload, so the pool can stay empty a while.)
    assert chaos.kills > seconds * 3, chaos.kills

    figures: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "seed": seed,
        "workers": configured,
        "preload": bool(spec["preload"]),
        "kills": chaos.kills,
        "signals": dict(chaos.sent),
        "respawns": respawns,
        "fds_before": before["fds"],
        "fds_after": after["fds"],
        "threads_before": before["threads"],
        "threads_after": after["threads"],
        "rss_before": before["rss"],
        "rss_after": after["rss"],
    }
    if control is not None and notify is not None:
        notify.close()
        assert control.errors == [], control.errors[:5]
        assert control.ok > seconds * 5, control.ok
        said = "\n".join("\n".join(lines) for _pid, lines in notify.snapshot())
        for word in ("READY=1", "RELOADING=1", "STATUS="):
            assert word in said, said[-500:]
        assert "cannot notify" not in log
        figures.update(control_requests=control.ok, notify_messages=len(notify.messages))
    if requests is not None:
        unexplained = []
        killed_mid_request = 0
        lost_before_hello = 0
        for pid, t0, t1, why in requests.failures:
            if pid is not None:
                when = chaos.killed.get(pid)
                if when is not None and t0 - 0.05 <= when <= t1 + 0.05:
                    killed_mid_request += 1
                    continue
            elif any(t0 - 0.05 <= when <= t1 + 0.05 for when in chaos.killed.values()):
                # Accepted by a worker that was killed before it could say who it is.
                lost_before_hello += 1
                continue
            unexplained.append((pid, round(t1 - t0, 3), why))
        figures.update(
            requests=requests.ok + len(requests.failures),
            failed=len(requests.failures),
            failed_killed_mid_request=killed_mid_request,
            failed_before_hello=lost_before_hello,
            failed_unexplained=len(unexplained),
        )
        assert unexplained == [], unexplained[:10]
        assert requests.ok > seconds * 20, requests.ok
        # Killed mid-request is rare: a worker spends most of its time in accept().
        assert lost_before_hello <= max(3, len(requests.failures) // 2), figures

    run.signal(signal.SIGQUIT)
    assert run.wait_exit(20) == 0
    print(f"\nchaos {scenario}: {figures}")
    if soak:
        from reliability import record_part

        record_part("chaos", scenario, figures)
