"""The master's HTTP endpoint for Prometheus (`--metrics ADDR`), served from its own loop.

A small HTTP/1.0-1.1 conversation, served like the control socket by one
bounded client server (host/clientserver.py) in the master's loop, so a slow,
silent, malformed or oversized client costs the master one bounded recv()
per wake-up and nothing more:

- at most MAX_CLIENTS connections at once: past that, the one that has waited
  longest for its request head gives its slot up, so slow clients cannot
  keep a probe waiting; only while every client is being answered do the
  next connections wait in the kernel's backlog;
- a request head (request line and headers) of at most MAX_REQUEST bytes
  (more gets a 431 and the connection is closed);
- CLIENT_TIMEOUT to send the request and read the reply, from accept on; the
  deadlines are the server's tick, so with no client connected it asks the
  master for no wake-up at all (an idle master stays at 0 syscalls).

One request per connection, answered with `Connection: close`: a scrape a
second does not need keep-alive, and it keeps the state machine small.

Endpoints: GET /metrics (what `render` returns for the request's Accept
header), GET /healthz (200 "ok" while the master runs), GET /readyz (200, or
503 with the reason `not_ready` gives); anything else 404, a method other
than GET 405. This module imports no prometheus_client: the master hands it
a render function.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from unicornish.errors import StartupError, UsageError
from unicornish.host import sockets as sockets_module
from unicornish.host.clientserver import Client, ClientServer, Limits, Loop
from unicornish.host.listeners import same_address
from unicornish.host.log import ErrorLog
from unicornish.protocol import METRICS_FD_ENV

# Connections at once (each costs an fd): past this, the one that has waited
# longest for its request head gives its slot up (a slowloris cannot starve a
# probe); while all are being answered, the next wait in the kernel's backlog.
MAX_CLIENTS = 64
# The longest request head (request line + headers) we read; more gets a 431.
MAX_REQUEST = 8 * 1024
# From accept: time to send the request and read the whole reply.
CLIENT_TIMEOUT = 5.0
BACKLOG = 1024
LIMITS = Limits(
    "metrics",
    max_request=MAX_REQUEST,
    timeout=CLIENT_TIMEOUT,
    max_clients=MAX_CLIENTS,
    # No grace: a scraper or a probe sends its request as it connects, and with
    # every slot taken the endpoint is under a flood, where waiting for the
    # newest connections to speak would keep the probes behind them (300 slow
    # connections made rounds of 64 that cost /healthz 150 ms with 50 ms).
    grace=0.0,
    recv_size=16 * 1024,
)
# A failing render is logged at most this often (Prometheus scrapes every few seconds).
ERROR_LOG_EVERY = 60.0

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
TEXT = "text/plain; charset=utf-8"
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# -- requests ---------------------------------------------------------------------


class HttpError(Exception):
    """A request we refuse: the status to answer with and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query string
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    head_size: int = 0  # bytes of the head, its blank line included

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def _head_end(data: bytes) -> tuple[int, int] | None:
    """(end of the head, its size with the blank line), or None while incomplete.
    Bare LF line ends are accepted too (RFC 9112 section 2.2 allows it)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    found = [(i, n) for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    if not found:
        return None
    end, sep = min(found)
    return end, end + sep


def parse_request(data: bytes) -> Request | None:
    """The request whose head `data` starts with; None while the head is
    incomplete. Raises HttpError for one that is malformed or too large."""
    found = _head_end(data.lstrip(b"\r\n"))
    skipped = len(data) - len(data.lstrip(b"\r\n"))  # stray empty lines before it
    if found is None:
        if len(data) > MAX_REQUEST:
            raise HttpError(431, f"request head over {MAX_REQUEST} bytes")
        return None
    end, size = found
    if skipped + size > MAX_REQUEST:
        raise HttpError(431, f"request head over {MAX_REQUEST} bytes")
    lines = data[skipped : skipped + end].replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "bad request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "bad method")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        if re.match(rb"^HTTP/\d\.\d$", version):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1")
        raise HttpError(400, "bad HTTP version")
    if target.startswith((b"http://", b"https://")):  # absolute-form: keep its path
        target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
    if not target.startswith(b"/"):
        raise HttpError(400, "bad request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):  # obs-fold and garbage alike
            raise HttpError(400, "bad header line")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method.decode("ascii"),
        target.split(b"?", 1)[0].decode("latin-1"),
        version.decode("ascii"),
        headers,
        skipped + size,
    )


def has_body(request: Request) -> bool:
    length = request.header("content-length").strip()
    return bool(request.header("transfer-encoding")) or (length not in ("", "0"))


def response(
    status: int,
    body: bytes,
    content_type: str = TEXT,
    version: str = "HTTP/1.1",
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    head = [
        f"{version} {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


# -- the endpoints ------------------------------------------------------------------


class Endpoints:
    """What each path answers. `render(accept)` -> (body, content type);
    `not_ready()` -> why the master is not ready, or None."""

    def __init__(
        self,
        render: Callable[[str], tuple[bytes, str]],
        not_ready: Callable[[], str | None],
        log: logging.Logger,
    ) -> None:
        self.render = render
        self.not_ready = not_ready
        self.errors = ErrorLog(log, ERROR_LOG_EVERY)

    def respond(self, request: Request) -> bytes:
        version = request.version
        if request.path not in ("/metrics", "/healthz", "/readyz"):
            return response(404, b"not found: try /metrics, /healthz or /readyz\n", version=version)
        if request.method != "GET":
            return response(405, b"only GET\n", version=version, extra=(("Allow", "GET"),))
        try:
            if request.path == "/healthz":
                return response(200, b"ok\n", version=version)
            if request.path == "/readyz":
                reason = self.not_ready()
                if reason is None:
                    return response(200, b"ready\n", version=version)
                return response(503, f"not ready: {reason}\n".encode(), version=version)
            body, content_type = self.render(request.header("accept"))
            return response(200, body, content_type, version=version)
        except Exception:  # noqa: BLE001 - a bug in a collector must not take the master down
            self.errors.failed(f"serving {request.path}")
            return response(500, b"internal error; see the master's log\n", version=version)


# -- the socket ----------------------------------------------------------------------


def inherited(spec: str) -> socket.socket | None:
    """The --metrics socket an old master handed over on USR2 (METRICS_FD_ENV),
    when it is a listening socket at the address we are to serve; else None
    (and an fd that does not fit is closed)."""
    text = os.environ.pop(METRICS_FD_ENV, "")
    if not text.isdigit() or int(text) < 3:
        return None
    fd = int(text)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        address = sockets_module.parse_address(spec, "--metrics")
        if sock.type == socket.SOCK_STREAM and listening and same_address(sock, address):
            sock.set_inheritable(False)
            sock.setblocking(False)
            return sock
    except (OSError, UsageError):
        pass
    sock.close()  # --metrics changed since the old master bound it
    return None


def discard_inherited() -> None:
    """Without --metrics now (the config changed before a USR2): close the
    socket the old master handed over, so that no worker keeps it."""
    text = os.environ.pop(METRICS_FD_ENV, "")
    if text.isdigit() and int(text) >= 3:
        try:
            if stat.S_ISSOCK(os.fstat(int(text)).st_mode):
                os.close(int(text))
        except OSError:
            pass


def bind(spec: str) -> socket.socket:
    """Bind --metrics ADDR; raises UsageError (bad address) or StartupError."""
    address = sockets_module.parse_address(spec, "--metrics")
    if address.family == socket.AF_UNIX:
        try:
            sock = sockets_module.bind(address)
        except StartupError as exc:
            raise StartupError(f"--metrics: {exc}") from None
    else:
        # One attempt: a busy port is a mistake to report, not a race to wait out.
        try:
            family, sockaddr = sockets_module.resolve(address)
            sock = sockets_module.listen_tcp(family, sockaddr, BACKLOG)
        except socket.gaierror as exc:
            raise StartupError(f"--metrics {spec}: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"--metrics {spec}: address already in use") from None
            raise StartupError(f"--metrics {spec}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    try:
        return sockets_module.socket_address(sock)
    except OSError:
        return f"fd={sock.fileno()}"


# -- the server ----------------------------------------------------------------------


class MetricsServer:
    """HTTP's conversation: one request per connection, answered, then closed;
    served by a ClientServer in the master's loop."""

    def __init__(
        self,
        loop: Loop,
        log: logging.Logger,
        sock: socket.socket,
        endpoints: Endpoints,
    ) -> None:
        self.log = log
        self.endpoints = endpoints
        self.address = describe(sock)
        self.server = ClientServer(loop, log, sock, LIMITS, self)

    @property
    def sock(self) -> socket.socket:
        return self.server.sock

    @property
    def clients(self) -> list[Client]:
        return self.server.clients

    def install(self) -> None:
        self.server.install()

    def tick(self, now: float) -> float | None:
        return self.server.tick(now)

    # -- the conversation ------------------------------------------------------------

    def admit(self, server: ClientServer, client: Client) -> bool:
        return True

    def pending(self, client: Client) -> bool:
        return False  # a complete request is answered as soon as it is read

    def timed_out(self, client: Client) -> None:
        pass  # a scraper that gives up, a port scan: not worth a line each

    def serve(self, server: ClientServer, client: Client) -> None:
        if client.closing:
            return
        if client.eof:  # gone before its request was complete: nothing to answer
            server.close(client)
            return
        try:
            request = parse_request(bytes(client.inbuf))
        except HttpError as exc:
            client.unread = True  # we stopped reading: the rest may be on its way
            client.closing = True
            server.reply(client, response(exc.status, f"{exc}\n".encode()))
            return
        if request is None:
            return
        client.unread = len(client.inbuf) > request.head_size or has_body(request)
        client.inbuf.clear()
        client.closing = True
        server.reply(client, self.endpoints.respond(request))

    # -- USR2 and exit ---------------------------------------------------------------

    def move_aside(self) -> None:
        """USR2: the new master inherits the socket and accepts on it; we stop."""
        self.server.hand_over()

    def move_back(self) -> None:
        """The new master died: serve again."""
        self.server.take_back()

    def close(self, unlink: bool) -> None:
        """The master exits: close every client and the socket; remove a unix
        socket's file unless another master (USR2) serves it."""
        self.server.close_all(unlink)

    def close_in_child(self) -> None:
        """In a new worker: drop our copies of the fds, touching nothing else."""
        self.server.close_in_child()
