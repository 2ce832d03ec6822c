"""The master's HTTP endpoint for Prometheus (`--metrics ADDR`), served from its own loop.

A small HTTP/1.0-1.1 server, written like the control socket (control.py):
non-blocking, driven by the master's EventLoop, and bounded everywhere, so a
slow, silent, malformed or oversized client costs the master one bounded
recv() per wake-up and nothing more:

- at most MAX_CLIENTS connections at once: at the limit the server stops
  accepting, and the next connections wait in the kernel's backlog until a
  client is done or dropped (a refusal would have to close a socket whose
  request is unread, which resets the connection: the client sees no reply);
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
import selectors
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from unicornish.errors import StartupError, UsageError
from unicornish.host import sockets as sockets_module
from unicornish.host.listeners import same_address
from unicornish.master.eventloop import Clients, ErrorLog, EventLoop
from unicornish.protocol import METRICS_FD_ENV

# More connections than this at once wait in the kernel's backlog (each costs an fd).
MAX_CLIENTS = 64
# The longest request head (request line + headers) we read; more gets a 431.
MAX_REQUEST = 8 * 1024
# From accept: time to send the request and read the whole reply.
CLIENT_TIMEOUT = 5.0
# Connections accepted per wake-up, so a flood cannot hog the loop.
ACCEPTS_PER_WAKE = 16
# After accept() fails for lack of fds, stop listening this long (no busy loop).
ACCEPT_PAUSE = 1.0
# A refused client may still be sending: read and drop its bytes this long after
# our reply, so that closing does not reset the connection before it read the reply.
LINGER = 1.0
RECV_SIZE = 16 * 1024
BACKLOG = 128
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


class Client:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline", "replied", "linger", "events")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = deadline
        self.replied = False  # the reply is in outbuf: read nothing more but lingering
        self.linger = False  # bytes may still come that we will not read: drain first
        self.events = selectors.EVENT_READ


class MetricsServer:
    def __init__(
        self,
        loop: EventLoop,
        log: logging.Logger,
        sock: socket.socket,
        endpoints: Endpoints,
    ) -> None:
        self.loop = loop
        self.log = log
        self.sock = sock
        self.endpoints = endpoints
        self.clients: Clients[Client] = Clients(loop)
        self.paused_until: float | None = None
        self.accepting = False
        self.handed_over = False  # USR2: a new master accepts on the socket now
        self.refused_logged_at = -1e9
        self.address = describe(sock)

    def install(self) -> None:
        self._accept_on()
        self.loop.close_in_child(self.close_in_child)

    def _accept_on(self) -> None:
        if not self.accepting:
            self.loop.add_reader(self.sock, self._on_accept)
            self.accepting = True

    def _accept_off(self) -> None:
        if self.accepting:
            self.loop.remove(self.sock)
            self.accepting = False

    # -- the loop's side -----------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Drop clients past their deadline, listen again after a pause; the next
        such deadline, or None when no client is connected (no timer at all)."""
        for client in self.clients:
            if now >= client.deadline:
                self._close(client)
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            if not self.handed_over and len(self.clients) < MAX_CLIENTS:
                self._accept_on()
        deadlines = [c.deadline for c in self.clients]
        if self.paused_until is not None:
            deadlines.append(self.paused_until)
        return min(deadlines) if deadlines else None

    def _on_accept(self) -> None:
        # Not past the limit: a connection once full waits in the kernel's backlog.
        starved = sockets_module.accept_some(
            self.sock, self._admit, ACCEPTS_PER_WAKE, lambda: self.accepting
        )
        if starved is not None:
            self.log.error(
                "metrics: cannot accept: %s; not listening for %gs", starved.strerror, ACCEPT_PAUSE
            )
            self._accept_off()
            self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        client = Client(conn, time.monotonic() + CLIENT_TIMEOUT)
        self.clients.add(client, lambda: self._on_event(client))
        if len(self.clients) >= MAX_CLIENTS:
            # Full: the next connections wait in the backlog; the first client
            # done (or dropped at its deadline) lets them in (_close).
            self._accept_off()
            now = time.monotonic()
            if now - self.refused_logged_at >= CLIENT_TIMEOUT:
                self.refused_logged_at = now
                self.log.warning("metrics: %d connections open; the next ones wait", MAX_CLIENTS)

    def _on_event(self, client: Client) -> None:
        if client.outbuf:
            self._send(client)
        elif client.replied:
            self._drain(client)
        else:
            self._recv(client)

    def _recv(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not data:  # gone before its request was complete: nothing to answer
            self._close(client)
            return
        client.inbuf += data
        try:
            request = parse_request(bytes(client.inbuf))
        except HttpError as exc:
            client.linger = True  # we stopped reading: the rest may be on its way
            self._reply(client, response(exc.status, f"{exc}\n".encode()))
            return
        if request is None:
            return
        client.linger = len(client.inbuf) > request.head_size or has_body(request)
        client.inbuf.clear()
        self._reply(client, self.endpoints.respond(request))

    def _reply(self, client: Client, data: bytes) -> None:
        client.replied = True
        client.outbuf += data
        self._send(client)

    def _send(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(client)
            return
        del client.outbuf[:sent]
        if client.outbuf:
            self._set_events(client, selectors.EVENT_WRITE)
            return
        if not client.linger:
            self._close(client)
            return
        # The reply is out; the client may still be sending what we refused to
        # read. Closing now would reset the connection and could destroy the
        # reply in flight: say we are done, then drop its bytes until it closes.
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(client)
            return
        client.deadline = min(client.deadline, time.monotonic() + LINGER)
        self._set_events(client, selectors.EVENT_READ)

    def _drain(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)

    def _set_events(self, client: Client, events: int) -> None:
        if not self.clients.set_events(client, events, lambda: self._on_event(client)):
            self._close(client)

    def _close(self, client: Client) -> None:
        self.clients.close(client)
        if len(self.clients) < MAX_CLIENTS and not self.handed_over and self.paused_until is None:
            self._accept_on()

    # -- USR2 and exit ---------------------------------------------------------------

    def move_aside(self) -> None:
        """USR2: the new master inherits the socket and accepts on it; we stop."""
        self.handed_over = True
        self._accept_off()

    def move_back(self) -> None:
        """The new master died: serve again."""
        self.handed_over = False
        if self.paused_until is None:
            self._accept_on()

    def close(self, unlink: bool) -> None:
        """The master exits: close every client and the socket; remove a unix
        socket's file unless another master (USR2) serves it."""
        for client in self.clients:
            self._close(client)
        self._accept_off()
        path = ""
        if unlink and self.sock.family == socket.AF_UNIX:
            name = self.sock.getsockname()
            path = name if isinstance(name, str) else ""
        self.sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def close_in_child(self) -> None:
        """In a new worker: drop our copies of the fds, touching nothing else."""
        for client in self.clients:
            client.sock.close()
        self.sock.close()
