"""The HTTP worker under load: slowloris connections cost buffers, not workers,
and every master feature (HUP, USR2 + QUIT, TTIN/TTOU, reforking, --max-tasks,
an adaptive count) runs under a load generator (wrk) with zero failed requests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import WRK, Load, LoadResult, listening_port, wait_until, wsgi_site

pytest.importorskip("flask")
pytest.importorskip("httptools")

needs_wrk = pytest.mark.skipif(WRK is None, reason="wrk not installed (make check installs it)")


def serve(start: Any, tmp_path: Path, *args: str) -> tuple[Any, int, Path]:
    site = wsgi_site(tmp_path)
    control = tmp_path / "ctl.sock"
    run = start(
        "--wsgi",
        "flask_app:app",
        "--listen",
        "127.0.0.1:0",
        "--control",
        str(control),
        *args,
        cwd=site,
    )
    port = listening_port(run)
    return run, port, site


def assert_no_failure(result: LoadResult) -> None:
    assert result.requests > 100, result.output
    assert result.failed == 0, result.output


@needs_wrk
def test_hup_under_load(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "2")
    run.wait_ready(2)
    load = Load(port, 6)
    time.sleep(1.5)
    run.signal(signal.SIGHUP)
    run.wait_log(r"worker\[\d+\] ready", 4, timeout=15)
    time.sleep(1)
    run.signal(signal.SIGHUP)
    assert_no_failure(load.result())


@needs_wrk
def test_ttin_ttou_under_load(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "2")
    run.wait_ready(2)
    load = Load(port, 6)
    for signum in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGTTOU, signal.SIGTTIN):
        time.sleep(1.2)
        run.signal(signum)
    assert_no_failure(load.result())


@needs_wrk
def test_max_tasks_under_load(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "2", "--max-tasks", "500")
    run.wait_ready(2)
    result = Load(port, 6).result()
    assert_no_failure(result)
    assert run.count(r"reached --max-tasks") >= 2, result.output


@needs_wrk
def test_refork_under_load(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "2", "--refork-after", "300,2000")
    run.wait_ready(2)
    result = Load(port, 7).result()
    assert_no_failure(result)
    assert run.count(r"mold") >= 1, run.log()[-3000:]


@needs_wrk
def test_adaptive_count_under_load(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(
        start, tmp_path, "--workers", "1:3", "--idle-workers", "1", "--scale-down-after", "1"
    )
    run.wait_ready(1)
    result = Load(port, 6, path="/slow?s=0.01").result()
    assert_no_failure(result)
    assert run.count(r"scale up") >= 1, run.log()[-3000:]
    wait_until(lambda: run.count(r"scale down") >= 1, 15, "a scale down after the load")


@needs_wrk
def test_usr2_and_quit_of_the_old_master_under_load(start: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    run, port, _ = serve(start, tmp_path, "--workers", "2", "--pid", str(pid_file))
    run.wait_ready(2)
    load = Load(port, 7)
    time.sleep(1.5)
    run.signal(signal.SIGUSR2)
    wait_until(lambda: pid_file.exists() and Path(str(pid_file) + ".oldbin").exists(), 15)
    new_pid = int(pid_file.read_text())
    # The new master's workers are ready (its log is ours too: one --log-file).
    run.wait_log(r"worker\[\d+\] ready", 4, timeout=15)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(20) == 0
    result = load.result()
    try:
        assert_no_failure(result)
    finally:
        os.kill(new_pid, signal.SIGQUIT)
        wait_until(lambda: not Path(f"/proc/{new_pid}").exists(), 20)


def test_slowloris_costs_buffers_not_workers(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "1", "--header-timeout", "60")
    run.wait_ready(1)
    sockets: list[socket.socket] = []
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        sockets.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        n = 0
        while not stop.is_set():
            for sock in sockets:
                try:
                    sock.sendall(b"X-%d: a\r\n" % n)
                except OSError:
                    pass
            n += 1
            stop.wait(0.5)

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        started = time.monotonic()
        for _ in range(300):
            c.request("GET", "/")
            r = c.getresponse()
            assert r.status == 200 and r.read() == b"hello from flask\n"
        took = time.monotonic() - started
        c.close()
        # New connections are accepted and served too, one per request.
        for _ in range(50):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/", headers={"Connection": "close"})
            assert c.getresponse().status == 200
            c.close()
        assert took < 10, took
    finally:
        stop.set()
        dripper.join(5)
        for sock in sockets:
            sock.close()


@needs_wrk
def test_kill_9_fails_only_the_requests_in_flight_on_that_worker(
    start: Any, tmp_path: Path
) -> None:
    run, port, _ = serve(start, tmp_path, "--workers", "2", "--spares", "1")
    run.wait_ready(2)
    load = Load(port, 6, connections=16)
    time.sleep(2)
    victim = run.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    result = load.result()
    # Each of wrk's connections has one request in flight: those the dead
    # worker held fail, at most one each, and nothing after.
    assert result.requests > 100, result.output
    assert result.failed <= 16, result.output
    assert result.errors.get("connect", 0) == 0 and result.non_2xx == 0, result.output
    run.wait_workers(2)


def test_config_file_keys_and_drain(start: Any, tmp_path: Path) -> None:
    site = wsgi_site(tmp_path)
    conf = tmp_path / "conf.py"
    conf.write_text(
        'wsgi = "flask_app:app"\nkeepalive = 1\naccess_log = "text"\n'
        'listen = ["127.0.0.1:0"]\ndrain = 2\n'
        "def after_fork(worker):\n    worker.log.info('after_fork of worker %d', worker.nr)\n"
    )
    metrics_sock = tmp_path / "m.sock"
    run = start("-c", str(conf), "--metrics", f"unix:{metrics_sock}", cwd=site)
    port = listening_port(run)
    run.wait_ready(1)
    run.wait_log("after_fork of worker 0")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert b" 200 " in sock.recv(1000)
        started = time.monotonic()
        assert sock.recv(1000) == b""  # keepalive = 1 from the file
        assert time.monotonic() - started < 3
    run.wait_log(r'worker\[0\] 127\.0\.0\.1:\d+ "GET / HTTP/1\.1" 200 [\d.]+ms')  # access log

    def readyz() -> int:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(metrics_sock))
        s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
        out = s.recv(1000)
        s.close()
        return int(out.split()[1])

    assert readyz() == 200
    run.signal(signal.SIGQUIT)
    wait_until(lambda: readyz() == 503, 5, "not ready while draining")
    # Still serving while it drains.
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/")
    assert c.getresponse().status == 200
    c.close()
    assert run.wait_exit(20) == 0
