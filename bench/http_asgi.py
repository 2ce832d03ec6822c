"""Scenario 14: --asgi against `uvicorn --workers N` and gunicorn with the uvicorn worker.

The same Starlette app (tests/asgiapp/main.py), the same number of workers,
the same wrk run against each:

* throughput and p99 latency of GET / (keep-alive, 64 connections);
* requests that failed (wrk's socket errors + non-2xx) while the server
  reloads its workers (HUP) and while it is upgraded in place (USR2, then QUIT
  to the old master: unicornish and gunicorn; uvicorn has no upgrade);
* the master's CPU time while idle for a few seconds;
* respawn: SIGKILL a worker, time until a new one answers.

Columns: unicornish; `gunicorn` = gunicorn -k uvicorn_worker.UvicornWorker;
`uvicorn` = uvicorn --workers N. uvicorn is the baseline of the throughput and
p99 rows (the same engine in each worker: the target is >= 0.95x its
throughput, p99 no worse).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import psutil
from scenarios import Ctx, Row
from servers import ROOT, VENV_BIN

APP_DIR = os.path.join(ROOT, "tests", "asgiapp")
WORKERS = 2
SCENARIO = "14 asgi"
PEERS = ("unicornish", "gunicorn", "uvicorn")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(peer: str, port: int, pid_file: str) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if peer == "unicornish":
        return [
            os.path.join(VENV_BIN, "unicornish"),
            "--asgi",
            "main:app",
            "--listen",
            bind,
            "--workers",
            str(WORKERS),
            "--pid",
            pid_file,
            "--graceful-timeout",
            "10",
        ]
    if peer == "gunicorn":
        return [
            os.path.join(VENV_BIN, "gunicorn"),
            "main:app",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "-w",
            str(WORKERS),
            "-b",
            bind,
            "--pid",
            pid_file,
            "--graceful-timeout",
            "10",
        ]
    return [
        os.path.join(VENV_BIN, "uvicorn"),
        "main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


class Server:
    def __init__(self, peer: str, workdir: str) -> None:
        self.peer = peer
        self.port = _free_port()
        self.pid_file = os.path.join(workdir, f"{peer}.pid")
        self.log = open(os.path.join(workdir, f"{peer}.log"), "wb")
        self.proc = subprocess.Popen(
            _command(peer, self.port, self.pid_file),
            cwd=APP_DIR,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        self.sessions = {self.proc.pid}

    def master(self) -> int:
        """The current master: after an upgrade, the new one (from its pid file;
        gunicorn's new master writes FILE.2)."""
        for path in (self.pid_file + ".2", self.pid_file):
            try:
                with open(path) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if psutil.pid_exists(pid):
                return pid
        return self.proc.pid

    def workers(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.master()).children()]
        except psutil.Error:
            return []

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def wait(self, what: Callable[[], object], timeout: float = 30) -> float:
        start = time.monotonic()
        while not what():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{self.peer}: timed out")
            time.sleep(0.01)
        return time.monotonic() - start

    def close(self) -> None:
        for sid in self.sessions | {self.master()}:
            try:
                os.killpg(os.getpgid(sid), signal.SIGKILL)
            except OSError:
                pass
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions:
                    proc.kill()
            except (OSError, psutil.Error):
                continue
        self.proc.wait(10)
        self.log.close()


def wrk(port: int, seconds: float, connections: int = 64) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    result = {"rps": 0.0, "p99_ms": float("nan"), "failed": 0.0, "requests": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        result["p99_ms"] = float(m.group(1)) * scale
    if m := re.search(r"(\d+) requests in", out):
        result["requests"] = float(m.group(1))
    failed = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        failed += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        failed += int(m.group(1))
    result["failed"] = float(failed)
    return result


def _ready(server: Server) -> None:
    server.wait(lambda: len(server.workers()) >= WORKERS and server.answers())
    # Every worker booted (the app imported): let the last one finish its startup.
    time.sleep(1.0)


def _under_load(server: Server, seconds: float, event: Callable[[], None]) -> float:
    """Failed requests of a wrk run during which `event` happens (after 1/4 of it)."""
    out: dict[str, float] = {}
    runner = _thread(lambda: out.update(wrk(server.port, seconds, 16)))
    time.sleep(seconds / 4)
    event()
    runner.join(seconds + 40)
    return out.get("failed", float("nan"))


def _thread(target: Callable[[], None]) -> object:
    import threading

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _workers_cpu(server: Server) -> float:
    """User + system seconds of the master's descendants (its workers) so far."""
    total = 0.0
    try:
        for child in psutil.Process(server.master()).children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def _upgrade(server: Server) -> None:
    old = server.master()
    os.kill(old, signal.SIGUSR2)
    server.wait(lambda: server.master() != old)
    new = server.master()
    server.sessions.add(old)
    server.wait(lambda: len(_children(new)) >= WORKERS)
    time.sleep(1.0)  # the new workers' startup
    os.kill(old, signal.SIGQUIT)


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def _idle_cpu_ms(server: Server, seconds: float) -> float:
    proc = psutil.Process(server.master())
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) * 1000


def _respawn_s(server: Server) -> float:
    """SIGKILL a worker: seconds until the master has as many children again
    (a new process forked; its app boot is not included)."""
    before = server.workers()
    victim = before[-1]
    os.kill(victim, signal.SIGKILL)
    return server.wait(lambda: victim not in (now := server.workers()) and len(now) >= len(before))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def s14_asgi(ctx: Ctx) -> list[Row]:
    import tempfile

    if shutil.which("wrk") is None:
        ctx.log("14 asgi: wrk not installed")
        return []
    seconds = 3.0 if ctx.quick else 5.0
    rounds = 1 if ctx.quick else 3
    figures: dict[str, dict[str, float | str]] = {p: {} for p in PEERS}
    workdir = tempfile.mkdtemp(prefix="unicornish-asgi-")
    servers: dict[str, Server] = {}
    try:
        for peer in PEERS:
            if not os.path.exists(_command(peer, 0, "")[0]):
                figures[peer]["error"] = "not installed"
                continue
            servers[peer] = Server(peer, workdir)
        for peer, server in list(servers.items()):
            try:
                _ready(server)
                wrk(server.port, 2, 64)  # warm-up
            except Exception as exc:  # noqa: BLE001 - one peer's failure is its cells
                figures[peer]["error"] = f"error: {str(exc)[:50]}"
                server.close()
                del servers[peer]
        # Throughput: rounds that take turns, so a change in the machine's load
        # (it may be shared) falls on every peer alike; the median of each.
        runs: dict[str, list[dict[str, float]]] = {p: [] for p in servers}
        for r in range(rounds):
            ctx.log(f"14 asgi: throughput round {r + 1}/{rounds}")
            for peer, server in servers.items():
                before = _workers_cpu(server)
                result = wrk(server.port, seconds, 64)
                used = _workers_cpu(server) - before
                # CPU time per request: what a busy host's scheduling does not move.
                result["cpu_us"] = used / max(1.0, result["requests"]) * 1e6
                runs[peer].append(result)
        ctx.raw["asgi_runs"] = runs  # every round, for the JSON: p99 moves a lot on a busy host
        for peer, results in runs.items():
            figures[peer]["rps"] = _median([x["rps"] for x in results])
            figures[peer]["p99_ms"] = _median([x["p99_ms"] for x in results])
            figures[peer]["failed"] = sum(x["failed"] for x in results)
            figures[peer]["cpu_us"] = _median([x["cpu_us"] for x in results])
        for peer, server in servers.items():
            ctx.log(f"14 asgi: {peer} lifecycle")
            try:
                figures[peer]["idle_cpu_ms"] = _idle_cpu_ms(server, 5.0)
                figures[peer]["reload_failed"] = _under_load(
                    server, 8, lambda s=server: os.kill(s.master(), signal.SIGHUP)
                )
                _ready(server)
                figures[peer]["respawn_s"] = _respawn_s(server)
                _ready(server)
                if peer == "uvicorn":
                    figures[peer]["upgrade_failed"] = "n/a: no upgrade"
                else:
                    figures[peer]["upgrade_failed"] = _under_load(
                        server, 10, lambda s=server: _upgrade(s)
                    )
            except Exception as exc:  # noqa: BLE001 - one peer's failure is its cells
                ctx.log(f"  !! {peer}: {exc}")
                figures[peer]["error"] = f"error: {str(exc)[:50]}"
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ctx.raw["asgi"] = figures

    def values(key: str) -> dict[str, float | str]:
        return {p: figures[p].get(key, figures[p].get("error", "-")) for p in PEERS}

    note = (
        "gunicorn = gunicorn -k uvicorn_worker.UvicornWorker; uvicorn = uvicorn --workers 2;"
        f" throughput and p99: median of {rounds} interleaved wrk runs of {seconds:g} s"
    )
    rows = [
        Row(SCENARIO, "throughput GET /", "/s", values("rps"), better="higher",
            baseline="uvicorn", target=">= 0.95x uvicorn", note=note),
        Row(SCENARIO, "p99 latency GET /", "ms", values("p99_ms"), baseline="uvicorn",
            target="<= uvicorn"),
        Row(SCENARIO, "workers' CPU per request", "us", values("cpu_us"), baseline="uvicorn",
            note="CPU per request: the workers' user + system time over the wrk runs"),
        Row(SCENARIO, "failed requests, steady load", "", values("failed"), target="0"),
        Row(SCENARIO, "failed requests during HUP", "", values("reload_failed"), target="0"),
        Row(SCENARIO, "failed requests during USR2+QUIT", "", values("upgrade_failed"),
            target="0"),
        Row(SCENARIO, "master CPU idle 5 s", "ms", values("idle_cpu_ms")),
        Row(SCENARIO, "respawn after SIGKILL", "s", values("respawn_s")),
    ]  # fmt: skip
    base = figures["uvicorn"]
    for row in rows:
        v = row.values.get("unicornish")
        if not isinstance(v, float):
            continue
        if row.metric.startswith("throughput") and isinstance(base.get("rps"), float):
            row.met = v >= 0.95 * float(base["rps"])
        elif row.metric.startswith("p99") and isinstance(base.get("p99_ms"), float):
            row.met = v <= float(base["p99_ms"])
        elif row.target == "0":
            row.met = v == 0
    return rows
