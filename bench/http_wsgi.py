#!/usr/bin/env python3
"""The HTTP worker (--wsgi) against gunicorn (sync, gthread), granian (WSGI) and
Ruby's Unicorn (Rack), side by side in one run, with wrk as the load.

    bench/.venv/bin/python bench/http_wsgi.py [--quick] [--out DIR]

`make bench` runs it after bench/run.py. Rows (requests/s unless said):

  keep-alive 1 worker   wrk -c64, hello world: req/s and p99 latency
  keep-alive 2 workers  the same with two workers
  close 1 worker        wrk -c64 -H 'Connection: close': a connection per request
  flask 1 worker        a small Flask app (JSON), keep-alive, one worker
  slowloris             keep-alive req/s with 1000 connections trickling a head
                        that never ends, as a share of the figure without them
  idle                  1000 idle keep-alive connections parked in one worker:
                        its wake-ups per second (voluntary context switches) over 5 s
  cpu per request       the serving processes' CPU time over the run / the requests
                        (steadier than a rate when other work shares the machine)
  rss, pss              the RSS and PSS of one worker after the keep-alive run (MiB)

Unicorn answers one request per connection (no keep-alive); its keep-alive
rows are what wrk gets from it so. granian is the ceiling (Rust); the gap to
it is reported as a ratio. Writes bench/results/http_wsgi.md and http_wsgi.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, "apps")
VENV_BIN = os.path.join(BENCH, ".venv", "bin")
PEERS = ("unicornish", "gunicorn sync", "gunicorn gthread", "granian", "unicorn")


def _exe(name: str) -> str | None:
    path = os.path.join(VENV_BIN, name)
    return path if os.access(path, os.X_OK) else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    peer: str
    proc: subprocess.Popen[bytes]
    port: int
    log: str

    def worker_pids(self) -> list[int]:
        """The processes that serve: children of the master (granian: its workers)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                out.append(int(entry))
        return out or [self.proc.pid]

    def stop(self) -> None:
        """SIGKILL the master's session and each of its children: a unicornish
        worker leads a process group of its own, so killpg alone misses it."""
        children = [p for p in self.worker_pids() if p != self.proc.pid]
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def command(peer: str, app: str, workers: int, port: int, tmp: str) -> list[str] | None:
    """The command line of `peer` serving `app` ("hello" or "flask")."""
    module = "wsgi_hello:application" if app == "hello" else "wsgi_flask:app"
    if peer == "unicornish":
        exe = _exe("unicornish")
        return exe and [
            exe,
            "--wsgi",
            module,
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--keepalive",
            "300",
        ]
    if peer.startswith("gunicorn"):
        exe = _exe("gunicorn")
        kind = peer.split()[1]
        extra = ["--threads", "4"] if kind == "gthread" else []
        return exe and [
            exe,
            "-k",
            kind,
            *extra,
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--keep-alive",
            "300",
            "--log-level",
            "warning",
            module,
        ]
    if peer == "granian":
        exe = _exe("granian")
        return exe and [
            exe,
            "--interface",
            "wsgi",
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            module,
        ]
    if peer == "unicorn":
        exe = shutil.which("unicorn")
        if not exe or app != "hello":
            return None
        return [exe, "-c", os.path.join(APPS, "unicorn.conf.rb"), os.path.join(APPS, "config.ru")]
    return None


def start(peer: str, app: str, workers: int, tmp: str) -> Server | None:
    port = free_port()
    cmd = command(peer, app, workers, port, tmp)
    if not cmd:
        return None
    env = dict(os.environ)
    env.update(
        BENCH_WORKERS=str(workers), BENCH_LISTEN=f"127.0.0.1:{port}", PYTHONDONTWRITEBYTECODE="1"
    )
    log = os.path.join(tmp, f"{peer.replace(' ', '_')}-{app}-{workers}.log")
    proc = subprocess.Popen(
        cmd,
        cwd=APPS,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(peer, proc, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{peer} exited: {open(log).read()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1."):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        server.stop()
        raise RuntimeError(f"{peer} did not answer in 30 s")
    # Every worker up (the first answer may come from the first one).
    time.sleep(1.0 if workers > 1 else 0.3)
    return server


@dataclass
class WrkResult:
    rps: float
    p99_ms: float
    errors: int
    output: str


def _ms(text: str) -> float:
    """wrk's latency (`812.00us`, `6.45ms`, `2.71s`, `1.02m`) in ms; nan if none."""
    found = re.match(r"([\d.]+)(us|ms|s|m)\b", text)
    if not found:
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    port: int, seconds: float, connections: int = 64, close: bool = False, path: str = "/"
) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(found.group(1)) if found else 0.0
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        rps,
        _ms(p99.group(1)) if p99 else float("nan"),
        errors + (int(non.group(1)) if non else 0),
        out,
    )


class Slowloris:
    """`n` connections, each sending a request head a field at a time, never ending it."""

    def __init__(self, port: int, n: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.setblocking(False)
                s.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
                self.socks.append(s)
            except OSError:
                break
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        n = 0
        while not self.stop.wait(1.0):
            for s in self.socks:
                try:
                    s.send(b"X-%d: a\r\n" % n)
                except OSError:
                    pass
            n += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def park_idle(port: int, n: int) -> list[socket.socket]:
    """`n` keep-alive connections that made one request each and now wait (the
    ones the server closed after its answer are dropped)."""
    import selectors

    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        s.setblocking(False)
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    waiting = set(socks)
    deadline = time.monotonic() + 15
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            try:
                sock.recv(4096)  # type: ignore[union-attr]
            except OSError:
                pass
            sel.unregister(sock)
            waiting.discard(sock)  # type: ignore[arg-type]
    sel.close()
    return socks


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its threads included (granian's)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages split between the processes sharing
    them (RSS counts what a worker shares with its master whole, in each)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Table:
    rows: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    def add(self, name: str, unit: str, values: dict[str, object]) -> None:
        self.rows.append((name, unit, values))


def measure(peers: list[str], quick: bool, log: Callable[[str], None]) -> Table:
    seconds = 3.0 if quick else 8.0
    table = Table()
    tmp = tempfile.mkdtemp(prefix="unicornish-http-bench-")
    runs = [
        ("keep-alive, hello, 1 worker", "hello", 1, False),
        ("keep-alive, hello, 2 workers", "hello", 2, False),
        ("Connection: close, hello, 1 worker", "hello", 1, True),
        ("keep-alive, Flask, 1 worker", "flask", 1, False),
    ]
    try:
        for name, app, workers, close in runs:
            rps: dict[str, object] = {}
            p99: dict[str, object] = {}
            rss: dict[str, object] = {}
            pss: dict[str, object] = {}
            cpu: dict[str, object] = {}
            for peer in peers:
                try:
                    server = start(peer, app, workers, tmp)
                except RuntimeError as exc:
                    rps[peer] = p99[peer] = f"error: {str(exc)[:50]}"
                    continue
                if server is None:
                    rps[peer] = p99[peer] = "n/a"
                    continue
                try:
                    wrk(server.port, 1.0, close=close)  # warm up
                    pids = server.worker_pids()
                    before = sum(cpu_seconds(p) for p in pids)
                    result = wrk(server.port, seconds, close=close)
                    used = sum(cpu_seconds(p) for p in pids) - before
                    served = result.rps * seconds
                    cpu[peer] = round(1e6 * used / served, 1) if served else "n/a"
                    rps[peer] = round(result.rps)
                    p99[peer] = round(result.p99_ms, 2)
                    if result.errors:
                        p99[peer] = f"{p99[peer]} ({result.errors} errors)"
                    if workers == 1 and not close:
                        pids = server.worker_pids()
                        rss[peer] = round(sum(rss_mib(p) for p in pids) / len(pids), 1)
                        pss[peer] = round(sum(pss_mib(p) for p in pids) / len(pids), 1)
                    log(f"{name}: {peer} {rps[peer]} req/s, p99 {p99[peer]} ms")
                finally:
                    server.stop()
            table.add(name, "req/s", rps)
            table.add(name + ": p99", "ms", p99)
            table.add(name + ": workers' CPU per request", "us", cpu)
            if rss:
                table.add(name + ": RSS per worker", "MiB", rss)
                table.add(name + ": PSS per worker", "MiB", pss)

        # Slowloris: the share of keep-alive throughput left with 1000 of them.
        share: dict[str, object] = {}
        for peer in peers:
            if peer == "unicorn":
                share[peer] = "n/a"
                continue
            server = start(peer, "hello", 1, tmp)
            if server is None:
                continue
            try:
                wrk(server.port, 1.0, connections=16)
                base = wrk(server.port, seconds, connections=16)
                loris = Slowloris(server.port, 1000)
                time.sleep(1.0)
                under = wrk(server.port, seconds, connections=16)
                loris.close()
                share[peer] = round(100 * under.rps / max(1.0, base.rps), 1)
                log(f"slowloris: {peer} {base.rps:.0f} -> {under.rps:.0f} req/s")
            finally:
                server.stop()
        table.add("keep-alive throughput kept with 1000 slowloris connections", "%", share)

        # Idle: wake-ups of a worker with 1000 parked keep-alive connections.
        wakes: dict[str, object] = {}
        for peer in peers:
            if peer in ("unicorn", "gunicorn sync"):
                wakes[peer] = "n/a: no keep-alive"
                continue
            server = start(peer, "hello", 1, tmp)
            if server is None:
                continue
            try:
                socks = park_idle(server.port, 1000)
                time.sleep(1.0)
                pids = server.worker_pids()
                before = {p: switches(p) for p in pids}
                time.sleep(5.0)
                per_s = sum(switches(p) - before[p] for p in pids) / 5.0 / len(pids)
                wakes[peer] = round(per_s, 1)
                for s in socks:
                    s.close()
                log(f"idle: {peer} {per_s:.1f} wake-ups/s per worker")
            except OSError as exc:
                wakes[peer] = f"error: {exc}"[:60]
            finally:
                server.stop()
        table.add("wake-ups/s of an idle worker with 1000 keep-alive connections", "/s", wakes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return table


def markdown(table: Table, peers: list[str]) -> str:
    head = ["measure", *peers, "unicornish / gunicorn best", "unicornish / granian"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, unit, values in table.rows:
        cells = [f"{name} ({unit})"]
        for p in peers:
            cells.append(str(values.get(p, "-")))
        mine = values.get("unicornish")
        guns = [
            v for k, v in values.items() if k.startswith("gunicorn") and isinstance(v, float | int)
        ]
        gran = values.get("granian")
        if isinstance(mine, (int, float)) and guns:
            best = max(guns) if unit in ("req/s", "%") else min(guns)  # us, ms, MiB: lower
            cells.append(f"{mine / best:.2f}x" if best else "-")
        else:
            cells.append("-")
        if isinstance(mine, (int, float)) and isinstance(gran, (int, float)) and gran:
            cells.append(f"{mine / gran:.2f}x")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--peers", default=",".join(PEERS))
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench/http_wsgi.py: wrk not installed (bash bench/setup.sh installs it); skipped")
        return 0
    peers = [p for p in args.peers.split(",") if p]
    started = time.monotonic()

    # TERM and HUP end up in the finally blocks that kill each server, as Ctrl-C does.
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    table = measure(peers, args.quick, log)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    text = (
        f"`bench/.venv/bin/python bench/http_wsgi.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {load} at the end, wrk -t1 -c64 "
        f"({'3' if args.quick else '8'} s per figure)\n\n" + markdown(table, peers) + "\n"
    )
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "http_wsgi.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "http_wsgi.json"), "w") as f:
        json.dump({"rows": table.rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
