"""--asgi: a real Starlette app (tests/asgiapp/main.py) served by uvicorn in each worker.

HTTP, streaming, a WebSocket and a lifespan; the master's features under wrk
load with zero failed requests; a WebSocket open across a HUP closed with 1001
only when its worker retires; a lifespan that raises fails the boot.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PY,
    WRK,
    Run,
    copy_asgi_app,
    free_port,
    get,
    gone,
    run_cli,
    start_asgi,
    wait_until,
    worker_children,
    wrk,
    wrk_result,
)

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return copy_asgi_app(tmp_path)


def test_http_streaming_websocket_and_lifespan(start: Any, app_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "ctl.sock"
    run = start_asgi(start, app_dir, port, "--workers", "2", "--control", str(control))
    run.wait_ready(2, timeout=20)
    status, body, headers = get(port, "/")
    assert (status, body) == (200, b"hello")
    assert headers["server"] == "uvicorn"
    info = json.loads(get(port, "/info")[1])
    assert info["started"] is True  # the lifespan ran before the worker said ready
    status, body, _ = get(port, "/stream?n=4&s=0.01")
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(4))
    assert get(port, "/status/404")[0] == 404
    assert get(port, "/status/418")[0] == 418
    with ws_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send("ping")
        assert ws.recv(timeout=5).endswith(" ping")
        # The metrics while it is open: one WebSocket, requests by status.
        text = run_ctl(control, "metrics")
    ok = r'^unicornish_http_requests_total\{method="GET",status="200"\} [3-9]'
    assert re.search(ok, text, re.M), text
    missing = r'^unicornish_http_requests_total\{method="GET",status="404"\} 1\.0'
    assert re.search(missing, text, re.M)
    teapot = r'^unicornish_http_requests_total\{method="GET",status="4xx"\} 1\.0'
    assert re.search(teapot, text, re.M)
    assert re.search(r"^unicornish_http_request_duration_seconds_count [3-9]", text, re.M), text
    assert re.search(r"^unicornish_websockets_open 1\.0", text, re.M), text
    assert re.search(r"^unicornish_http_requests_in_flight 0\.0", text, re.M)
    # One request, one task: the master's task figures count them.
    assert re.search(r"^unicornish_task_duration_seconds_count [5-9]", text, re.M), text
    out = run_ctl(control, "status", "--json")
    workers = json.loads(out)["workers"]
    assert sum(w["tasks"] for w in workers) >= 5
    assert {w["state"] for w in workers} == {"idle"}
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0


def run_ctl(control: Path, *words: str) -> str:
    args = ["status", "--control", str(control), *words[1:]] if words[0] == "status" else None
    if args is None:
        args = ["ctl", "--control", str(control), *words]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_http_options_pass_through(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start_asgi(
        start,
        app_dir,
        port,
        "--keepalive",
        "0",
        "--root-path",
        "/api",
        "--forwarded-allow-ips",
        "*",
        "--access-log",
        "json",
        "--log-format",
        "json",
        "--limit-request-line",
        "200",
        "--limit-request-fields",
        "20",
        "--limit-request-field-size",
        "100",
    )
    run.wait_ready(1, timeout=20)
    status, body, headers = get(port, "/info", {"X-Forwarded-For": "10.1.2.3"})
    info = json.loads(body)
    assert info["client"] == "10.1.2.3" and info["root_path"] == "/api"
    assert headers["connection"] == "close"  # --keepalive 0
    assert get(port, "/" + "x" * 300)[0] == 414
    assert get(port, "/", {"X-Big": "y" * 200})[0] == 431
    assert get(port, "/", {f"X-H{i}": "1" for i in range(30)})[0] == 431
    line = run.wait_log(r'"event": "http_request"')
    entry = next(
        json.loads(text) for text in line.splitlines() if '"event": "http_request"' in text
    )
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["path"] == "/api/info"


def test_bad_input_is_one_line(app_dir: Path) -> None:
    port = str(free_port())
    for spec, why in (
        ("nosuch:app", "app module not found: nosuch"),
        ("main:nothing", "has no 'nothing'"),
        ("main:VERSION", "VERSION is not callable"),
        ("main:app-x", "expected MODULE:NAME"),
    ):
        done = run_cli("--asgi", spec, "--listen", port, cwd=app_dir)
        assert done.returncode == 1, (spec, done.stderr)
        assert done.stderr.count("\n") == 1 and why in done.stderr, done.stderr
    done = run_cli("--asgi", "main:app", cwd=app_dir)
    assert done.returncode == 2
    assert done.stderr == "unicornish: error: --asgi needs at least one --listen address\n"
    # Without the extra: one line naming it, before anything is forked.
    hide = "import sys; sys.modules['uvicorn'] = None; from unicornish.cli import main; main()"
    done = subprocess.run(
        [PY, "-c", hide, "--asgi", "main:app", "--listen", port],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "unicornish: error: --asgi needs uvicorn: pip install 'unicornish[asgi]'\n"
    )


def test_factory_and_default_name(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start("--asgi", "main:create_app()", "--listen", f"127.0.0.1:{port}", cwd=app_dir)
    run.wait_ready(1, timeout=20)
    assert get(port, "/")[1] == b"hello"
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    port = free_port()
    run = start("--asgi", "main", "--listen", f"127.0.0.1:{port}", cwd=app_dir)
    run.wait_ready(1, timeout=20)
    assert get(port, "/")[1] == b"hello"
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    # A file path, from another directory.
    port = free_port()
    spec = f"{app_dir / 'main.py'}:create_app()"
    run = start("--asgi", spec, "--listen", f"127.0.0.1:{port}", cwd=app_dir.parent)
    run.wait_ready(1, timeout=20)
    assert get(port, "/")[1] == b"hello"


def test_a_lifespan_that_raises_fails_the_boot_and_rolls_back_a_hup(
    start: Any, app_dir: Path
) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "2", env={"FAIL_STARTUP": "db is down"})
    run.wait_log(r"worker\[\d\] lifespan startup failed: RuntimeError: db is down", timeout=20)
    run.wait_log(r"could not boot \(\d+ times in a row\): crash loop", timeout=20)
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    # A HUP to an app whose startup now fails: the old workers stay.
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "2")
    before = run.wait_ready(2, timeout=20)
    (app_dir / "FAIL_STARTUP").write_text("cache is unreachable")
    run.signal(signal.SIGHUP)
    run.wait_log(r"lifespan startup failed: RuntimeError: cache is unreachable", timeout=20)
    run.wait_log(r"reload (failed|rolled back|aborted)", timeout=20)
    assert run.worker_pids() == before
    assert get(port, "/")[0] == 200


@pytest.mark.skipif(WRK is None, reason="needs wrk")
def test_hup_ttin_ttou_and_max_tasks_under_load_fail_no_request(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "2", "--max-tasks", "2500")
    first = run.wait_ready(2, timeout=20)
    load = wrk(port, 20)
    wait_until(lambda: run.count(r"reached --max-tasks") >= 1, 12, "a --max-tasks recycle")
    (app_dir / "main.py").write_text(
        (app_dir / "main.py").read_text().replace('"APP_VERSION", "1"', '"APP_VERSION", "2"')
    )
    run.signal(signal.SIGHUP)
    run.wait_log(r"reload done", timeout=20)
    run.signal(signal.SIGTTIN)
    run.wait_log(r"worker\[2\] ready", timeout=20)
    run.signal(signal.SIGTTOU)
    run.wait_log(r"reaped pid=\d+ worker\[2\]", timeout=20)
    assert load.poll() is None, "wrk ended before the last event: nothing was under load"
    out = wrk_result(load)
    assert json.loads(get(port, "/info")[1])["version"] == "2"
    assert not set(first.values()) & set(run.worker_pids().values())
    assert run.count(r"recycled after \d+ tasks \(--max-tasks\)") >= 1, out


@pytest.mark.skipif(WRK is None, reason="needs wrk")
def test_usr2_then_quit_old_under_load_fails_no_request(
    start: Any, app_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    pid_file = tmp_path / "master.pid"
    run = start_asgi(start, app_dir, port, "--workers", "2", "--pid", str(pid_file))
    run.wait_ready(2, timeout=20)
    load = wrk(port, 10)
    time.sleep(1)  # load running before the upgrade: wrk has no "started" signal
    run.signal(signal.SIGUSR2)
    wait_until(lambda: pid_file.exists() and int(pid_file.read_text()) != run.pid, 20, "new pid")
    new_pid = int(pid_file.read_text())
    run.wait_log(r"worker\[\d\] ready", count=4, timeout=20)
    run.signal(signal.SIGQUIT)
    run.wait_exit(20)
    assert load.poll() is None, "wrk ended before the old master did: nothing was under load"
    wrk_result(load)
    try:
        assert get(port, "/")[0] == 200
    finally:
        os_kill(new_pid, signal.SIGQUIT)
        wait_until(lambda: gone(new_pid), 15, "the new master to stop")


def os_kill(pid: int, signum: int) -> None:
    try:
        import os

        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def test_graceful_stop_finishes_requests_and_streams(start: Any, app_dir: Path) -> None:
    port = free_port()
    # A keep-alive longer than the stop may take: the idle connection must be
    # closed by the drain, not by its keep-alive timeout.
    run = start_asgi(
        start, app_dir, port, "--workers", "2", "--graceful-timeout", "10", "--keepalive", "30"
    )
    run.wait_ready(2, timeout=20)
    results: list[tuple[int, bytes]] = []

    def fetch(path: str) -> None:
        results.append(get(port, path)[:2])

    threads = [threading.Thread(target=fetch, args=("/slow?s=1.5",)) for _ in range(4)]
    threads.append(threading.Thread(target=fetch, args=("/stream?n=20&s=0.075",)))
    for thread in threads:
        thread.start()
    # An idle keep-alive connection: closed by the drain, not waited for.
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/")
    idle.getresponse().read()
    wait_until(lambda: in_flight(run) >= 5, 10, "5 requests in flight")
    stopped_at = time.monotonic()
    run.signal(signal.SIGQUIT)
    for thread in threads:
        thread.join(15)
    assert run.wait_exit(15) == 0
    assert time.monotonic() - stopped_at < 8  # not the graceful timeout: nothing was killed
    assert run.count(r"status=exit 0") == 2, run.log()
    assert sorted(status for status, _ in results) == [200] * 5
    assert b"chunk 19\n" in dict((b[:5], b) for _, b in results)[b"chunk"]
    idle.close()


def in_flight(run: Run) -> int:
    """Requests in flight, from the workers' scoreboard states (busy workers) and log."""
    import psutil

    count = 0
    for proc in run.workers():
        try:
            count += sum(1 for c in proc.net_connections("tcp") if c.status == "ESTABLISHED")
        except psutil.Error:
            continue
    return count


def test_websocket_across_a_hup_is_closed_1001_when_its_worker_retires(
    start: Any, app_dir: Path
) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "1", "--graceful-timeout", "4")
    old = run.wait_ready(1, timeout=20)[0]
    with ws_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send("a")
        assert ws.recv(timeout=5) == f"{old} a"
        run.signal(signal.SIGHUP)
        run.wait_log(r"worker\[0\] ready", 2, timeout=20)
        asked_at = time.monotonic()  # the old worker gets QUIT now
        # It no longer accepts (the new one answers), yet this WebSocket still works.
        wait_until(lambda: json.loads(get(port, "/info")[1])["pid"] != old, 5, "the new worker")
        ws.send("b")
        assert ws.recv(timeout=5) == f"{old} b"
        assert "reload done" not in run.log()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.send("c")
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        waited = time.monotonic() - asked_at
    assert 1.5 < waited < 6, waited
    wait_until(lambda: gone(old), 10, "the old worker to exit")
    run.wait_log(rf"reaped pid={old} worker\[0\] status=exit 0")
    run.wait_log(r"closing open WebSockets \(1001\)")


def test_a_blocked_event_loop_is_killed_with_its_traceback(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--timeout", "1")
    pid = run.wait_ready(1, timeout=20)[0]
    threading.Thread(target=lambda: _quiet_get(port, "/block?s=30"), daemon=True).start()
    log = run.wait_log(rf"worker\[0\] pid={pid} timed out", timeout=15)
    run.wait_log(rf"reaped pid={pid} worker\[0\] status=killed by SIGKILL", timeout=10)
    assert "in block" in run.log(), log[-2000:]
    run.wait_log(r"worker\[0\] ready", 2, 20)
    assert get(port, "/")[0] == 200


def _quiet_get(port: int, path: str) -> None:
    try:
        get(port, path)
    except OSError:
        pass


def test_adaptive_count_sees_requests_in_flight(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "1:3", "--idle-workers", "1")
    run.wait_ready(1, timeout=20)
    threads = [
        threading.Thread(target=_quiet_get, args=(port, "/slow?s=4"), daemon=True) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    run.wait_log(r"scale up: 0 of \d+ idle", timeout=15)
    run.wait_log(r"worker\[1\] ready", timeout=20)


def test_refork_from_a_warm_asgi_worker(start: Any, app_dir: Path) -> None:
    port = free_port()
    run = start_asgi(start, app_dir, port, "--workers", "2", "--refork-after", "30")
    run.wait_ready(2, timeout=20)
    for _ in range(80):
        assert get(port, "/")[0] == 200
    run.wait_log(r"refork done: 2 workers forked from mold pid=\d+", timeout=30)
    molded = {int(p) for p in re.findall(r"spawned pid=(\d+) \(from mold", run.log())}
    # The workers they replace got QUIT; one may still accept until its next tick.
    wait_until(lambda: set(worker_children(run.pid)) <= molded, 10, "the old workers gone")
    seen = {json.loads(get(port, "/info")[1])["pid"] for _ in range(20)}
    assert seen and seen <= molded
    with ws_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send("x")
        assert ws.recv(timeout=5).endswith(" x")


def test_a_spare_takes_a_dead_workers_slot_and_drain_says_not_ready(
    start: Any, app_dir: Path
) -> None:
    port, metrics = free_port(), free_port()
    run = start_asgi(
        start, app_dir, port, "--spares", "1", "--drain", "3", "--metrics", f"127.0.0.1:{metrics}"
    )
    pid = run.wait_ready(1, timeout=20)[0]
    run.wait_log(r"spare spawned pid=\d+", timeout=10)
    wait_until(lambda: get(metrics, "/readyz")[0] == 200, 10, "ready")
    os_kill(pid, signal.SIGKILL)
    run.wait_log(r"worker\[0\] spawning\.\. \(a spare takes the slot\)", timeout=10)
    wait_until(lambda: _answers(port), 10, "the spare to serve")
    assert json.loads(get(port, "/info")[1])["pid"] != pid
    run.signal(signal.SIGQUIT)
    # Draining: not ready, while the worker still serves.
    wait_until(lambda: get(metrics, "/readyz")[0] == 503, 5, "not ready")
    assert get(port, "/")[0] == 200
    assert run.wait_exit(15) == 0


def _answers(port: int) -> bool:
    try:
        return get(port, "/")[0] == 200
    except OSError:
        return False


def test_forwarded_headers_trusted_from_the_allow_list_and_unix_sockets(
    start: Any, app_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "app.sock"
    run = start_asgi(
        start, app_dir, port, "--listen", f"unix:{path}", "--forwarded-allow-ips", "10.0.0.1"
    )
    run.wait_ready(1, timeout=20)
    forwarded = {"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https"}
    # 127.0.0.1 is not on the list: its X-Forwarded-* are ignored.
    info = json.loads(get(port, "/info", forwarded)[1])
    assert (info["client"], info["scheme"]) == ("127.0.0.1", "http")
    # A unix-socket peer (a proxy on this host) is trusted.
    conn = UnixConnection(str(path))
    conn.request("GET", "/info", headers=forwarded)
    info = json.loads(conn.getresponse().read())
    conn.close()
    assert (info["client"], info["scheme"]) == ("10.9.9.9", "https")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)
