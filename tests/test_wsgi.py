"""The HTTP worker (--wsgi) with real apps and real clients: Flask and Django,
curl and http.client, the request corpus over a socket, keep-alive,
pipelining, 100-continue, HEAD, errors, and the master's features."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    exchange,
    free_port,
    listening_port,
    run_cli,
    samples,
    statuses,
    wait_until,
    wsgi_site,
)
from helpers import http as get_metrics
from http_corpus import INVALID, VALID

pytest.importorskip("flask")
pytest.importorskip("django")
pytest.importorskip("httptools")

CURL = shutil.which("curl")


def serve(start: Any, tmp_path: Path, app: str, *args: str) -> tuple[Any, int, Path]:
    site = wsgi_site(tmp_path)
    run = start("--wsgi", app, "--listen", "127.0.0.1:0", *args, cwd=site)
    port = listening_port(run)
    run.wait_ready(int(_option(args, "--workers", "1")))
    return run, port, site


def _option(args: tuple[str, ...], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def conn(port: int, timeout: float = 10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    c = conn(port)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- Flask -------------------------------------------------------------------------------


def test_flask_app_forms_uploads_streaming_and_files(start: Any, tmp_path: Path) -> None:
    run, port, site = serve(start, tmp_path, "flask_app:app")
    status, headers, body = request(port, "GET", "/")
    assert (status, body) == (200, b"hello from flask\n")
    assert headers["server"] == "unicornish" and "date" in headers

    status, _, body = request(
        port,
        "POST",
        "/form",
        body="name=Ada&lang=caf%C3%A9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and json.loads(body) == {"name": "Ada", "lang": "café"}

    data = bytes(range(256)) * 20000  # 5 MB: spooled to a file by the server
    payload, content_type = multipart({"note": "n1"}, {"file": ("a.bin", data)})
    status, _, body = request(port, "POST", "/upload", payload, {"Content-Type": content_type})
    assert status == 200
    assert json.loads(body) == {
        "name": "a.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": "n1",
    }

    # Streaming: no length from the app, so chunked on HTTP/1.1.
    status, headers, body = request(port, "GET", "/stream?n=3")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body == b"chunk 0 /stream\nchunk 1 /stream\nchunk 2 /stream\n"

    # send_file: wsgi.file_wrapper, sent with os.sendfile.
    status, headers, body = request(port, "GET", "/file")
    payload_bytes = (site / "payload.bin").read_bytes()
    assert status == 200 and body == payload_bytes
    assert headers["content-length"] == str(len(payload_bytes))

    status, _, body = request(port, "GET", "/big?n=3000000")
    assert status == 200 and body == b"x" * 3000000

    # An app error is a 500 without the traceback; the worker lives on.
    pid = run.worker_pids()[0]
    status, _, body = request(port, "GET", "/error")
    assert status == 500 and b"boom" not in body and b"Traceback" not in body
    run.wait_log("boom in the app")
    assert "Traceback" in run.log()
    assert request(port, "GET", "/")[0] == 200
    assert run.worker_pids()[0] == pid


def test_environ_follows_pep_3333(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    status, _, body = request(port, "GET", "/environ?x=%41&y=1")
    env = json.loads(body)
    assert env["PATH_INFO"] == "/environ" and env["QUERY_STRING"] == "x=%41&y=1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(port)
    assert env["wsgi.url_scheme"] == "http" and env["SCRIPT_NAME"] == ""
    # PATH_INFO is the decoded path as latin-1 (PEP 3333): é in UTF-8 is two chars.
    raw = exchange(
        port, b"GET /environ/caf%C3%A9 HTTP/1.1\r\nHost: h:81\r\nConnection: close\r\n\r\n"
    )
    assert b" 404 " in raw  # Flask has no such route, but it saw the request:
    # Forwarded headers from a trusted proxy (127.0.0.1 is trusted by default).
    _, _, body = request(
        port,
        "GET",
        "/environ",
        headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https"},
    )
    env = json.loads(body)
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["wsgi.url_scheme"] == "https"
    # A header spelled with underscores never passes for one with dashes.
    _, _, body = request(port, "GET", "/environ", headers={"X_Forwarded_Proto": "https"})
    assert json.loads(body)["wsgi.url_scheme"] == "http"


def test_untrusted_proxies_are_not_believed(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app", "--forwarded-allow-ips", "10.0.0.1")
    _, _, body = request(
        port,
        "GET",
        "/environ",
        headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"},
    )
    env = json.loads(body)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"


# -- Django ------------------------------------------------------------------------------


def test_django_app_with_csrf_form_upload_stream_and_file(start: Any, tmp_path: Path) -> None:
    run, port, site = serve(start, tmp_path, "djsite.wsgi:application")
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and body == b"hello from django\n"

    c = conn(port)
    c.request("GET", "/form/")
    r = c.getresponse()
    token = json.loads(r.read())["csrf"]
    cookie = r.getheader("Set-Cookie").split(";")[0]
    form = f"csrfmiddlewaretoken={token}&name=Grace&age=85"
    c.request(
        "POST",
        "/form/",
        body=form,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie,
            "Referer": f"http://127.0.0.1:{port}/form/",
        },
    )
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read()) == {"name": "Grace", "age": 85}
    # Same connection, no token: Django's CSRF check says 403.
    c.request(
        "POST",
        "/form/",
        body="name=x&age=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    r = c.getresponse()
    assert r.status == 403
    r.read()
    c.close()

    data = b"\x00\xff" * 300000
    payload, content_type = multipart({}, {"file": ("d.bin", data)})
    status, _, body = request(port, "POST", "/upload/", payload, {"Content-Type": content_type})
    assert status == 200 and json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()

    status, headers, body = request(port, "GET", "/stream/?n=4")
    assert status == 200 and body == b"line 0\nline 1\nline 2\nline 3\n"

    status, headers, body = request(port, "GET", "/file/")
    assert status == 200 and body == (site / "payload.bin").read_bytes()

    status, _, body = request(port, "GET", "/error/")
    assert status == 500 and b"boom" not in body
    assert request(port, "GET", "/")[0] == 200


# -- HTTP/1.1 ------------------------------------------------------------------------------


def test_keep_alive_pipelining_head_and_continue(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    # Keep-alive: one connection, many requests.
    c = conn(port)
    for _ in range(20):
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"hello from flask\n"
    c.close()

    # Pipelining: all sent at once, answered in order.
    pipelined = (
        b"".join(b"GET /environ?i=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10))
        + b"GET /environ?i=last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    raw = exchange(port, pipelined)
    assert statuses(raw) == [200] * 11
    order = [
        line.split(b'"QUERY_STRING":"')[1].split(b'"')[0]
        for line in raw.split(b"\n")
        if b"QUERY" in line
    ]
    assert order == [b"i=%d" % i for i in range(10)] + [b"i=last"]

    # HEAD: the headers of GET, no body.
    raw = exchange(port, b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head and b"Content-Length: 17" in head and body == b""

    # Expect: 100-continue: the interim answer comes before the body is sent.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /raw HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"data")
        assert b" 200 " in sock.recv(1000)

    # HTTP/1.0: closed after the response unless it asks for keep-alive.
    raw = exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert statuses(raw) == [200] and b"Connection: close" in raw
    raw = exchange(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", timeout=1.0)
    assert b"Connection: keep-alive" in raw

    # A chunked request body.
    raw = exchange(
        port,
        b"POST /raw HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert b'"size":11' in raw and hashlib.sha256(b"hello world").hexdigest().encode() in raw


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl(start: Any, tmp_path: Path) -> None:
    run, port, site = serve(start, tmp_path, "flask_app:app")
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "--fail",
            f"http://127.0.0.1:{port}/",
            f"http://127.0.0.1:{port}/pid",
            "-w",
            "%{num_connects}\n",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0 and "hello from flask" in out.stdout
    assert out.stdout.splitlines()[-1] == "0"  # the second request reused the connection
    upload = tmp_path / "up.bin"
    upload.write_bytes(b"u" * 2_000_000)
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "--fail",
            "-F",
            f"file=@{upload}",
            "-F",
            "note=x",
            f"http://127.0.0.1:{port}/upload",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert json.loads(out.stdout)["size"] == 2_000_000


def test_the_request_corpus_over_a_socket(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    pid = run.worker_pids()[0]
    for name, data in VALID:
        raw = exchange(port, data, timeout=2.0, until_close=False)
        assert raw.startswith(b"HTTP/1.1 "), name
        assert b"HTTP/1.1 400" not in raw and b"HTTP/1.1 5" not in raw, (name, raw[:200])
    for name, data, status in INVALID:
        raw = exchange(port, data, timeout=5.0)
        assert statuses(raw) == [status], (name, raw[:300])
        assert b"Connection: close" in raw, name
    # Nothing of it reached the app, nor hurt the worker; each cause is logged.
    assert run.worker_pids()[0] == pid
    assert "Traceback" not in run.log()
    assert run.count("refused a request") >= 5


def test_a_bad_request_after_good_ones_on_one_connection(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    raw = exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    assert statuses(raw) == [200, 400]


def test_limits_and_timeouts(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(
        start,
        tmp_path,
        "flask_app:app",
        "--limit-request-body",
        "1000",
        "--header-timeout",
        "1",
        "--keepalive",
        "1",
    )
    raw = exchange(port, b"POST /raw HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
    assert statuses(raw) == [413]
    raw = exchange(
        port,
        b"POST /raw HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3e8\r\n"
        + b"a" * 1000
        + b"\r\n1\r\nb\r\n0\r\n\r\n",
    )
    assert statuses(raw) == [413]
    # A head that never ends: 408 after --header-timeout, the connection closed.
    started = time.monotonic()
    raw = exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n", timeout=5)
    assert statuses(raw) == [408] and time.monotonic() - started < 3
    # An idle keep-alive connection is closed after --keepalive.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        assert b" 200 " in sock.recv(1000)
        started = time.monotonic()
        assert sock.recv(1000) == b""
        assert 0.5 < time.monotonic() - started < 3


# -- the master's features ------------------------------------------------------------------


def test_bad_wsgi_specs_fail_before_any_fork(tmp_path: Path) -> None:
    site = wsgi_site(tmp_path)
    (site / "notcallable.py").write_text("application = 42\n")
    (site / "broken.py").write_text("import nonexistent_module_xyz\n")
    for spec, message in (
        ("nosuchmodule:app", "app module not found: nosuchmodule"),
        ("flask_app:nosuch", "has no 'nosuch'"),
        ("notcallable", "application is not callable (got int)"),
        ("broken:app", "ModuleNotFoundError"),
        ("flask_app:app:x", "must be MODULE:NAME"),
    ):
        out = run_cli("--wsgi", spec, "--listen", "127.0.0.1:0", cwd=site)
        assert out.returncode in (1, 2), (spec, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (spec, out.stderr)
        assert "worker[" not in out.stderr
    out = run_cli("--wsgi", "flask_app:app", "--app", "x.py", cwd=site)
    assert out.returncode != 0 and "give one app" in out.stderr


def test_a_factory_and_the_status_of_connections(start: Any, tmp_path: Path) -> None:
    site = wsgi_site(tmp_path)
    (site / "factory.py").write_text(
        "def make():\n    def app(e, s):\n        s('200 OK', [])\n        return [b'made']\n"
        "    return app\n"
    )
    control = tmp_path / "ctl.sock"
    run = start(
        "--wsgi", "factory:make()", "--listen", "127.0.0.1:0", "--control", str(control), cwd=site
    )
    port = listening_port(run)
    run.wait_ready(1)
    held = [conn(port) for _ in range(3)]
    for c in held:
        c.request("GET", "/")
        assert c.getresponse().read() == b"made"
    out = run_cli("status", "--control", str(control), "--json")
    worker = json.loads(out.stdout)["workers"][0]
    assert worker["connections"] == 3 and worker["tasks"] == 3
    table = run_cli("status", "--control", str(control)).stdout.splitlines()
    assert table[1].split()[:6] == ["NR", "PID", "AGE", "STATE", "TASKS", "CONNS"]
    assert table[2].split()[4:6] == ["3", "3"]
    for c in held:
        c.close()


def test_quit_finishes_the_request_in_progress_and_closes_keepalive_cleanly(
    start: Any, tmp_path: Path
) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    idle = conn(port)
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"hello from flask\n"
    slow = conn(port)
    slow.request("GET", "/slow?s=1")
    time.sleep(0.3)
    run.signal(signal.SIGQUIT)
    # The request in progress is answered, with Connection: close.
    r = slow.getresponse()
    assert r.status == 200 and r.read() == b"slept\n" and r.getheader("Connection") == "close"
    # The idle keep-alive connection: its next request within the grace is answered too.
    idle.request("GET", "/")
    r = idle.getresponse()
    assert r.status == 200 and r.getheader("Connection") == "close"
    assert run.wait_exit(10) == 0


def test_max_tasks_recycles_between_requests(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app", "--max-tasks", "20")
    first = run.worker_pids()[0]
    c = conn(port)
    pids = set()
    for _ in range(60):
        try:
            c.request("GET", "/pid")
            r = c.getresponse()
        except (http.client.HTTPException, ConnectionError):
            c.close()
            c = conn(port)
            c.request("GET", "/pid")
            r = c.getresponse()
        assert r.status == 200
        pids.add(json.loads(r.read())["pid"])
        if r.getheader("Connection") == "close":
            c.close()
            c = conn(port)
    assert first in pids and len(pids) >= 2
    assert run.count(r"reached --max-tasks") >= 1


def test_metrics_of_requests(start: Any, tmp_path: Path) -> None:
    site = wsgi_site(tmp_path)
    metrics_port = free_port()
    run = start(
        "--wsgi",
        "flask_app:app",
        "--preload",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        cwd=site,
    )
    port = listening_port(run)
    run.wait_ready(1)
    for _ in range(3):
        request(port, "GET", "/")
    request(port, "POST", "/raw", b"abc")
    request(port, "GET", "/nope")
    exchange(port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused
    status, text = get_metrics(metrics_port, "/metrics")
    assert status == 200
    found = samples(text)
    assert found['unicornish_http_requests_total{method="GET",status="200"}'] == 3
    assert found['unicornish_http_requests_total{method="POST",status="200"}'] == 1
    assert found['unicornish_http_requests_total{method="GET",status="404"}'] == 1
    assert found['unicornish_http_requests_refused_total{cause="host"}'] == 1
    assert found["unicornish_http_request_duration_seconds_count"] == 5
    assert found["unicornish_http_received_bytes_total"] > 0
    assert found["unicornish_http_sent_bytes_total"] > 0
    assert "unicornish_http_connections" in found


def test_access_log(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(
        start, tmp_path, "flask_app:app", "--access-log", "json", "--log-format", "json"
    )
    request(port, "GET", "/environ?a=1")
    log = run.wait_log(r'"path": "/environ\?a=1"')
    line = next(x for x in log.splitlines() if '"http_request"' in x)
    entry = json.loads(line)
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["bytes"] > 0
    assert entry["client"].startswith("127.0.0.1:") and entry["http_version"] == "1.1"


def test_hup_reloads_without_failing_a_request(start: Any, tmp_path: Path) -> None:
    run, port, site = serve(start, tmp_path, "flask_app:app", "--workers", "2")
    app = site / "flask_app.py"
    failures = []
    versions = set()
    deadline = time.monotonic() + 4
    hupped = False
    c = conn(port)
    while time.monotonic() < deadline:
        if not hupped and time.monotonic() > deadline - 3:
            app.write_text(app.read_text().replace('VERSION = "1"', 'VERSION = "2"'))
            run.signal(signal.SIGHUP)
            hupped = True
        try:
            c.request("GET", "/pid")
            r = c.getresponse()
            versions.add(json.loads(r.read())["version"])
            if r.getheader("Connection") == "close":
                c.close()
                c = conn(port)
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
            c.close()
            c = conn(port)
    assert failures == []
    wait_until(lambda: run.count("reload.*done|reloaded") >= 1 or "2" in versions, 10)
    assert "2" in versions


def test_timeout_kills_a_stuck_request_with_its_traceback(start: Any, tmp_path: Path) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app", "--timeout", "1")
    first = run.worker_pids()[0]
    c = conn(port, timeout=20)
    c.request("GET", "/slow?s=30")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        c.getresponse().read()
    c.close()
    run.wait_log(r"in slow")  # the traceback names the view that was stuck
    wait_until(lambda: run.worker_pids().get(0) not in (None, first), 10)
    assert request(port, "GET", "/")[0] == 200


def test_a_flood_of_pipelined_requests_is_read_a_little_at_a_time(
    start: Any, tmp_path: Path
) -> None:
    run, port, _ = serve(start, tmp_path, "flask_app:app")
    flood = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2000
    raw = exchange(port, flood + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 20)
    assert statuses(raw) == [200] * 2001


def test_pep_3333_corners(start: Any, tmp_path: Path) -> None:
    run, port, site = serve(start, tmp_path, "pep3333")
    assert request(port, "GET", "/write")[2] == b"written then returned"
    status, headers, body = request(port, "GET", "/exc_info")
    assert (status, body, headers["retry-after"]) == (503, b"try later", "1")
    assert request(port, "GET", "/close")[2] == b"ab"
    # A failure after part of the body was sent: the connection is closed (the
    # client sees a short body), close() is still called, the worker lives on.
    raw = exchange(port, b"GET /late_error HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert raw.startswith(b"HTTP/1.1 200 ") and b"never" not in raw
    wait_until(lambda: (site / "closed.log").read_text().count("closed") == 2, 5)
    raw = exchange(port, b"GET /not_modified HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 304 ") and raw.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in raw and b"Transfer-Encoding" not in raw
    # A header that would split the response is the app's error: a 500.
    status, headers, body = request(port, "GET", "/bad_header")
    assert status == 500 and "x-split" not in headers and "set-cookie" not in headers
    request(port, "GET", "/errors")
    run.wait_log("a line for the log")
    assert request(port, "GET", "/")[0] == 404


def test_wsgi_needs_a_listener(tmp_path: Path) -> None:
    site = wsgi_site(tmp_path)
    out = run_cli("--wsgi", "flask_app:app", cwd=site)
    assert out.returncode == 2 and "--wsgi needs at least one --listen address" in out.stderr
