"""/metrics latency with many workers, and the master's syscalls between scrapes.

    .venv/bin/python bench/metrics_latency.py [--workers 256] [--requests 200] [--idle 10]

Starts a master with --metrics on a free loopback port, waits for /readyz to
say ready, then times REQUESTS sequential GET /metrics (connect to last byte),
then counts the master's syscalls with strace for IDLE seconds with no scrape.
Prints one line per figure; stops the master (and so its workers) at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Tasks of 1 s: the workers count tasks and change state, without taking the
# CPU the master's scrape is timed on (2 cores here).
APP = """
import time
def worker_start(worker):
    time.sleep(1.0)
"""


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The master's user + system CPU time: unlike wall time, not inflated by
    whatever else the machine runs."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# What Prometheus 2.x sends: it gets OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def get(port: int, path: str, accept: str = "") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    (tmp / "app.py").write_text(APP)
    # This Python (the bench's venv, or the dev one) runs the checkout's master.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "unicornish", "--app", "app.py", "--workers", str(args.workers)]
    cmd += ["--metrics", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0"]
    log = open(tmp / "log", "wb")
    master = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=log, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or master.poll() is not None:
                print("master not ready; log:", (tmp / "log").read_text()[-2000:])
                return 1
            time.sleep(0.1)
        get(port, "/metrics")  # the first scrape builds the registry
        for name, accept in (("text 0.0.4", ""), ("OpenMetrics", PROMETHEUS_ACCEPT)):
            times = []
            size = 0
            cpu_before = cpu_seconds(master.pid)
            for _ in range(args.requests):
                began = time.perf_counter()
                status, body = get(port, "/metrics", accept)
                times.append((time.perf_counter() - began) * 1000)
                assert status == 200, status
                size = len(body)
            cpu_ms = (cpu_seconds(master.pid) - cpu_before) * 1000 / args.requests
            times.sort()
            p90 = times[int(len(times) * 0.9) - 1]
            print(
                f"/metrics ({name}) with {args.workers} workers: {size} bytes, p50 "
                f"{statistics.median(times):.1f} ms, p90 {p90:.1f} ms, max {times[-1]:.1f} ms "
                f"({args.requests} requests); master CPU {cpu_ms:.1f} ms per scrape"
            )
        samples = len(re.findall(rb"^unicornish_worker_memory_uss_bytes\{", body, re.M))
        print(f"USS/PSS series present after {args.requests + 1} scrapes: {samples}")
        out = tmp / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-c", "-o", str(out), "-p", str(master.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(args.idle)  # the figure itself: nothing to wait for
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        text = out.read_text()
        total = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
        calls = int(total.group(1)) if total else 0
        print(f"master syscalls in {args.idle:g} s idle (no scrape, --poll 30): {calls}")
        if calls:
            print(text)
    finally:
        os.killpg(master.pid, signal.SIGQUIT)
        try:
            master.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
