"""tests/unit: the --metrics HTTP request parser, the TCP_INFO decoding of a
listener's accept queue, the server's tick (no timer without clients) and
the per-slot task tally, without starting a master."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from unicornish.master.eventloop import EventLoop
from unicornish.metrics.endpoint import (
    CLIENT_TIMEOUT,
    MAX_REQUEST,
    Endpoints,
    HttpError,
    MetricsServer,
    Request,
    has_body,
    parse_request,
    response,
)
from unicornish.metrics.families import (
    TCP_INFO_SIZE,
    TCP_LISTEN,
    Tallies,
    accept_queue,
    decode_tcp_info,
)

# -- the request parser -------------------------------------------------------------


def test_a_whole_get_is_parsed():
    request = parse_request(
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text\r\n\r\n"
    )
    assert request is not None
    assert (request.method, request.path, request.version) == ("GET", "/metrics", "HTTP/1.1")
    assert request.header("ACCEPT") == "application/openmetrics-text"
    assert request.head_size == len(
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text\r\n\r\n"
    )


def test_an_incomplete_head_waits_for_more():
    assert parse_request(b"") is None
    assert parse_request(b"GET /metrics HTTP/1.1\r\nHost: a\r\n") is None


def test_bare_lf_line_ends_and_leading_empty_lines_are_accepted():
    request = parse_request(b"\r\nGET /healthz HTTP/1.0\nHost: a\n\n")
    assert request is not None and request.path == "/healthz" and request.version == "HTTP/1.0"


def test_repeated_headers_are_joined():
    request = parse_request(b"GET / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert request is not None and request.header("accept") == "a, b"


def test_absolute_form_keeps_its_path():
    request = parse_request(b"GET http://host:9000/metrics HTTP/1.1\r\n\r\n")
    assert request is not None and request.path == "/metrics"


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"G(T /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics FTP/1.0\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nBad Name: b\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_refused(data: bytes, status: int):
    with pytest.raises(HttpError) as caught:
        parse_request(data)
    assert caught.value.status == status


def test_a_head_over_the_cap_is_refused_complete_or_not():
    padding = b"X-Pad: " + b"a" * MAX_REQUEST + b"\r\n"
    with pytest.raises(HttpError) as caught:
        parse_request(b"GET /metrics HTTP/1.1\r\n" + padding)  # no end yet
    assert caught.value.status == 431
    with pytest.raises(HttpError) as caught:
        parse_request(b"GET /metrics HTTP/1.1\r\n" + padding + b"\r\n")
    assert caught.value.status == 431
    # Just under the cap is fine.
    head = b"GET /metrics HTTP/1.1\r\nX-Pad: "
    fits = head + b"a" * (MAX_REQUEST - len(head) - 4) + b"\r\n\r\n"
    assert len(fits) == MAX_REQUEST and parse_request(fits) is not None


def test_a_body_is_noticed():
    assert has_body(Request("GET", "/", "HTTP/1.1", {"content-length": "3"}))
    assert has_body(Request("GET", "/", "HTTP/1.1", {"transfer-encoding": "chunked"}))
    assert not has_body(Request("GET", "/", "HTTP/1.1", {"content-length": "0"}))


def test_response_has_length_and_closes():
    data = response(503, b"not ready: x\n", version="HTTP/1.0")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert b"Content-Length: 13" in head and b"Connection: close" in head
    assert body == b"not ready: x\n"


def test_endpoints_route_and_refuse():
    import logging

    ready: list[str | None] = [None]
    render = lambda accept: (f"accept={accept}".encode(), "text/x")  # noqa: E731
    endpoints = Endpoints(render, lambda: ready[0], logging.getLogger())

    def ask(method: str, path: str, accept: str = "") -> tuple[int, bytes]:
        data = endpoints.respond(Request(method, path, "HTTP/1.1", {"accept": accept}))
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    assert ask("GET", "/metrics", "a/b") == (200, b"accept=a/b")
    assert ask("GET", "/healthz") == (200, b"ok\n")
    assert ask("GET", "/readyz") == (200, b"ready\n")
    ready[0] = "master is stopping (graceful)"
    assert ask("GET", "/readyz") == (503, b"not ready: master is stopping (graceful)\n")
    assert ask("GET", "/nothing")[0] == 404
    assert ask("POST", "/metrics")[0] == 405
    assert ask("HEAD", "/healthz")[0] == 405


# -- the accept queue from TCP_INFO -------------------------------------------------------


def _tcp_info(state: int, unacked: int, sacked: int) -> bytes:
    fields = [0] * 24
    fields[4], fields[5] = unacked, sacked
    return struct.pack("=8B24I", state, 0, 0, 0, 0, 0, 0, 0, *fields)


def test_tcp_info_of_a_listener_is_decoded():
    raw = _tcp_info(TCP_LISTEN, 7, 1024)
    assert len(raw) == TCP_INFO_SIZE
    assert decode_tcp_info(raw) == (7, 1024)


def test_tcp_info_of_another_state_or_too_short_is_nothing():
    assert decode_tcp_info(_tcp_info(1, 7, 1024)) is None  # ESTABLISHED
    assert decode_tcp_info(_tcp_info(TCP_LISTEN, 7, 1024)[:20]) is None


def test_accept_queue_of_a_real_listener():
    listener = socket.socket()
    clients = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(50)
        assert accept_queue(listener) == (0, 50)
        for _ in range(3):
            clients.append(socket.create_connection(listener.getsockname()))
        # The handshakes complete in the kernel; nobody calls accept().
        deadline = time.monotonic() + 5
        while accept_queue(listener) != (3, 50) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accept_queue(listener) == (3, 50)
        unix = socket.socket(socket.AF_UNIX)
        assert accept_queue(unix) is None
        unix.close()
    finally:
        for c in clients:
            c.close()
        listener.close()


# -- the server's tick --------------------------------------------------------------------------


def test_no_timer_without_clients():
    import logging

    loop = EventLoop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    endpoints = Endpoints(lambda accept: (b"", "text/plain"), lambda: None, logging.getLogger())
    server = MetricsServer(loop, logging.getLogger(), listener, endpoints)
    server.install()
    client = socket.create_connection(listener.getsockname())
    try:
        assert server.tick(time.monotonic()) is None  # idle: no wake-up asked for
        before = time.monotonic()
        loop.wait(before + 2)  # the connection wakes the loop, which accepts it
        deadline = server.tick(time.monotonic())
        assert deadline is not None and before < deadline <= time.monotonic() + CLIENT_TIMEOUT
        client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        loop.wait(time.monotonic() + 2)  # reads, answers, closes
        assert client.recv(1000).startswith(b"HTTP/1.1 200 OK")
        assert not server.clients
        assert server.tick(time.monotonic()) is None  # and no timer again
    finally:
        client.close()
        server.close(unlink=False)
        loop.selector.close()


# -- tallies -----------------------------------------------------------------------------------


class _Board:
    def __init__(self, tasks: int) -> None:
        self.tasks = tasks

    def task_count(self) -> int:
        return self.tasks


class _Proc:
    def __init__(self, nr: int, tasks: int) -> None:
        self.nr = nr
        self.board = _Board(tasks)


def test_tasks_per_slot_never_go_down_when_a_worker_is_replaced():
    tallies = Tallies()
    live = [_Proc(0, 40), _Proc(1, 7), _Proc(-1, 0)]  # -1: a spare, not counted
    assert tallies.tasks_by_slot(live) == {0: 40, 1: 7}  # type: ignore[arg-type]
    tallies.worker_reaped(0, 41)  # it did one more before it died
    live = [_Proc(0, 0), _Proc(1, 9)]  # its replacement starts from 0
    assert tallies.tasks_by_slot(live) == {0: 41, 1: 9}  # type: ignore[arg-type]
    tallies.worker_reaped(1, 9)  # a slot scaled away keeps its total
    assert tallies.tasks_by_slot([_Proc(0, 2)]) == {0: 43, 1: 9}  # type: ignore[arg-type]
