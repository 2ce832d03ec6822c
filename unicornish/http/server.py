"""The HTTP worker's one thread: an epoll loop of connections around an app
that is called with one complete request at a time.

The loop accepts from the shared listeners, reads and parses request heads
and bodies into buffers (each with a deadline), parks idle keep-alive
connections, and hands the app a request only once it is complete. So a slow
client, an idle keep-alive connection or a slowloris attack costs a buffer,
not the worker. A response that fits in the socket is written without
waiting; the rest of it waits in the connection's buffer while the app serves
the next request. Only a response streamed by the app (an iterable larger
than a buffer, a file) makes the worker wait for its client, with a deadline.

A connection is in one of these states:

    IDLE     between requests (a keep-alive wait, or a new connection)
    READING  part of a request has come: its head must be complete within
             --header-timeout, and its body must move at least that often
    QUEUED   complete requests wait for the app (pipelined ones in order)
    WRITING  a response's end waits in the buffer for the client to read
    LINGER   the last response is sent and our side shut: the client's
             leftover bytes are read and dropped until it closes, so its
             kernel does not discard our answer on a reset

Timers: each state's deadlines are one duration apart from "now", so each
state keeps its connections in a dict in deadline order and the loop sleeps
until the first one: a worker with only idle connections makes no wake-up
until one of them is due (and none without connections).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from unicornish.host.log import Throttled
from unicornish.host.sockets import OUT_OF_RESOURCES
from unicornish.http.parser import HTTPError, Limits, Request, RequestReader
from unicornish.scoreboard import BUSY as BUSY_STATE
from unicornish.scoreboard import IDLE as IDLE_STATE

IDLE, READING, QUEUED, WRITING, LINGER = range(5)

# How long a graceful stop (QUIT, --max-tasks, a promotion) waits for the next
# request on an idle keep-alive connection before closing it; a request that
# comes is answered with Connection: close.
STOP_GRACE_SECONDS = 1.0
# How long a closing connection is read and drained after our last byte.
LINGER_SECONDS = 2.0
# A response the app streams waits at most this long for its client to read.
WRITE_STALL_SECONDS = 30.0
# Complete requests queued on one connection before it is no longer read.
PIPELINE_DEPTH = 16
# Connections accepted per listener wake-up.
ACCEPT_BATCH = 64
# accept() failing for lack of fds or memory: listeners rest this long.
ACCEPT_PAUSE_SECONDS = 0.1
# A refusal is logged at most once per cause in this many seconds.
LOG_EVERY_SECONDS = 10.0
RECV_BYTES = 65536
# What is parsed at a time (see _feed).
FEED_BYTES = 8192

REASONS = {
    100: "Continue",
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT


class ClientGone(Exception):
    """The client went away, or stopped reading, while a response was streamed."""


class Conn:
    __slots__ = (
        "sock",
        "fd",
        "peer",
        "local",
        "reader",
        "out",
        "state",
        "timer",
        "closing",
        "eof",
        "reading",
        "served",
        "unix",
        "extra",
        "pending",
        "unreadable",
        "client_closes",
    )

    def __init__(
        self, sock: socket.socket, peer: Any, local: Any, reader: RequestReader, unix: bool
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.local = local
        self.reader = reader
        self.out = bytearray()
        self.state = IDLE
        self.timer: dict[Conn, float] | None = None
        # Close once the requests already read are answered (Connection: close).
        # Set once an answer saying Connection: close is written (or the client
        # shut its side): close after it. Never set on a connection whose last
        # answer promised keep-alive: its client may be sending the next request.
        self.closing = False
        # The client shut its side: answer what it sent complete, then close.
        self.eof = False
        # Whether EPOLLIN is asked for (False: paused, or nothing more to read).
        self.reading = True
        self.served = 0
        self.unix = unix
        # The worker kind's own per-connection state (the WSGI kind: its environ).
        self.extra: Any = None
        # Bytes read but not parsed yet: PIPELINE_DEPTH requests were waiting.
        self.pending: bytes | None = None
        # An error or an upgrade was read: nothing after it is parsed.
        self.unreadable = False
        # Its last request said Connection: close (see _linger).
        self.client_closes = False


class Stats:
    """What the loop counts for the metrics (the kind binds these to the worker's
    arena); plain callables so the loop needs no metrics module."""

    def __init__(self) -> None:
        self.bytes_in: Callable[[float], None] = _nothing
        self.bytes_out: Callable[[float], None] = _nothing
        self.connections: Callable[[float], None] = _nothing
        self.refused: Callable[[str], None] = _nothing_str


def _nothing(amount: float) -> None:
    pass


def _nothing_str(cause: str) -> None:
    pass


class HTTPServer:
    """One worker's connections. `handle(conn, request)` is the worker kind's:
    it calls the app and writes the response with send()/stream()/sendfile()."""

    def __init__(
        self,
        worker: Any,
        handle: Callable[[Conn, Request], None],
        limits: Limits,
        keepalive: float,
        header_timeout: float,
        max_connections: int,
        stats: Stats,
    ) -> None:
        self.worker = worker
        self.log = worker.log
        self.handle = handle
        self.limits = limits
        self.keepalive = keepalive
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.stats = stats
        self.conns: dict[int, Conn] = {}
        self.ready: deque[Conn] = deque()
        self.listeners = {sock.fileno(): sock for sock in worker.sockets}
        for sock in worker.sockets:
            sock.setblocking(False)
        self.listening = False
        self.stopping = False
        self.poller = select.epoll()
        self.clock = time.monotonic
        # One ordered dict per kind of deadline: conn -> its deadline.
        self.idle_timers: dict[Conn, float] = {}
        self.read_timers: dict[Conn, float] = {}
        self.write_timers: dict[Conn, float] = {}
        self.linger_timers: dict[Conn, float] = {}
        self.accept_paused_until = 0.0
        self._throttle = Throttled(worker.log, LOG_EVERY_SECONDS)
        self._date_second = -1
        self._date = b""
        self._pidfd = -1

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        worker = self.worker
        poller = self.poller
        wake_fd = worker.wake_fd
        poller.register(wake_fd, select.EPOLLIN)
        self._watch_master()
        self._listen(True)
        conns = self.conns
        listeners = self.listeners
        ready = self.ready
        board = worker.board
        clock = self.clock
        busy = False
        board.state[0] = IDLE_STATE
        try:
            while True:
                if worker.stopping and not self.stopping:
                    self.stop()
                if self.stopping and not conns:
                    return
                timeout = 0.0 if ready else self._next_deadline(clock())
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    continue
                for fd, mask in events:
                    conn = conns.get(fd)
                    if conn is not None:
                        if mask & _OUT:
                            self._flush(conn)
                        if mask & ~_OUT and conn.fd >= 0:
                            if conn.reading:
                                self._read(conn)
                            else:
                                self._hangup(conn, mask)
                    elif fd in listeners:
                        self._accept(listeners[fd])
                    elif fd == wake_fd:
                        worker.drain_wake()
                    elif fd == self._pidfd:
                        worker.check_master()
                        poller.unregister(fd)
                        os.close(fd)
                        self._pidfd = -1
                if ready:
                    if not busy:
                        board.state[0] = BUSY_STATE
                        busy = True
                    self._serve_ready()
                if busy and not ready:
                    board.state[0] = IDLE_STATE
                    busy = False
                self._expire(clock())
        finally:
            self._close_all()

    def _serve_ready(self) -> None:
        """Answer one request of each connection that has one, in turn: a
        connection with many pipelined requests does not starve the others."""
        ready = self.ready
        for _ in range(len(ready)):
            conn = ready.popleft()
            if conn.fd < 0 or conn.state != QUEUED:
                continue
            queue = conn.reader.done
            request = queue.popleft()
            # The client said it sends nothing after this one (Connection: close,
            # HTTP/1.0): once answered, nothing is left to drain from it.
            conn.client_closes = not request.keep_alive and not queue and conn.pending is None
            if self.stopping or self.worker.stopping:
                request.keep_alive = False  # the last answer on it says Connection: close
            if request.error is not None:
                self._refuse(conn, request.error)
            else:
                try:
                    self.handle(conn, request)
                except ClientGone:
                    self._close(conn)
                    continue
                except Exception:  # noqa: BLE001 - a defect of ours: this connection ends, we go on
                    self.log.exception("worker[%d] error serving a request", self.worker.nr)
                    self._close(conn)
                    continue
                conn.served += 1
                if not request.keep_alive:
                    conn.closing = True
            if conn.fd < 0:
                continue
            self._after_response(conn)
            if self.stopping is False and self.worker.stopping:
                self.stop()

    def _after_response(self, conn: Conn) -> None:
        if conn.out:
            self._set_state(conn, WRITING)
            self._events(conn)
            return
        if conn.closing:
            self._linger(conn)
            return
        if conn.reader.done:
            self._set_state(conn, QUEUED)
            self.ready.append(conn)
        elif conn.eof:
            self._close(conn)
            return
        elif conn.reader.between_requests:
            self._set_state(conn, IDLE)
        else:
            self._set_state(conn, READING)
        if not conn.reading and len(conn.reader.done) < PIPELINE_DEPTH:
            pending = conn.pending
            if pending is not None:
                conn.pending = None
                self._feed(conn, pending)
            if (
                len(conn.reader.done) < PIPELINE_DEPTH
                and conn.pending is None
                and not conn.unreadable
            ):
                conn.reading = True
                self._events(conn)

    # -- connections ------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.note("accept", f"cannot accept: {exc.strerror}; pausing")
                    self.accept_paused_until = self.clock() + ACCEPT_PAUSE_SECONDS
                    self._listen(False)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINVAL):
                    continue
                raise
            sock.setblocking(False)
            unix = sock.family == socket.AF_UNIX
            if not unix:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            try:
                local = sock.getsockname()
            except OSError:
                sock.close()
                continue
            conn = Conn(sock, peer, local, RequestReader(self.limits, self.clock), unix)
            self.conns[conn.fd] = conn
            self.poller.register(conn.fd, _IN)
            self.stats.connections(1)
            self.worker.board.connections[0] = len(self.conns)  # status shows it
            # The first request has the head's deadline from the start.
            self._timer(conn, self.read_timers, self.header_timeout)
            if len(self.conns) >= self.max_connections:
                self._listen(False)
                return

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._eof(conn)
            return
        self.stats.bytes_in(len(data))
        if conn.state == LINGER:
            return  # the client's leftovers: read and dropped
        self._feed(conn, data)

    def _feed(self, conn: Conn, data: bytes) -> None:
        """Parse what came, a slice at a time: once PIPELINE_DEPTH requests wait,
        the rest is kept unparsed (and the socket unread) until they are answered,
        so a recv full of tiny pipelined requests queues dozens, not thousands."""
        reader = conn.reader
        queued = len(reader.done)
        if len(data) <= FEED_BYTES:
            more = reader.feed(data)
        else:
            more = True
            for offset in range(0, len(data), FEED_BYTES):
                more = reader.feed(data[offset : offset + FEED_BYTES])
                if not more:
                    break
                if len(reader.done) >= PIPELINE_DEPTH and offset + FEED_BYTES < len(data):
                    conn.pending = data[offset + FEED_BYTES :]
                    break
        if not more:
            conn.unreadable = True
        if reader.continue_wanted:
            reader.continue_wanted = False
            if not reader.between_requests:  # its body is still to come: ask for it
                self.send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        done = len(reader.done)
        if not more or done >= PIPELINE_DEPTH:
            # An error or an upgrade: nothing after it is read. Or enough queued.
            conn.reading = False
            self._events(conn)
        if done > queued:
            if conn.state in (IDLE, READING):
                self._set_state(conn, QUEUED)
                self.ready.append(conn)
        elif conn.state == IDLE and not reader.between_requests:
            self._set_state(conn, READING)
        elif conn.state == READING and not reader.in_head:
            # A body moving: its deadline starts again.
            self._timer(conn, self.read_timers, self.header_timeout)

    def _hangup(self, conn: Conn, mask: int) -> None:
        """An error or hang-up on a connection we are not reading."""
        if mask & select.EPOLLERR or conn.state not in (QUEUED, WRITING):
            self._close(conn)
        else:
            conn.eof = True

    def _eof(self, conn: Conn) -> None:
        """The client shut its side: answer what it sent complete, then close."""
        if conn.state in (QUEUED, WRITING):
            conn.eof = True
            conn.reading = False
            self._events(conn)
        else:
            self._close(conn)

    def _set_state(self, conn: Conn, state: int) -> None:
        conn.state = state
        if state == IDLE:
            if self.stopping:
                self._timer(conn, self.idle_timers, STOP_GRACE_SECONDS)
            else:
                self._timer(conn, self.idle_timers, self.keepalive)
        elif state == READING:
            started = conn.reader.started or self.clock()
            self._timer(conn, self.read_timers, started + self.header_timeout - self.clock())
        elif state == WRITING:
            self._timer(conn, self.write_timers, WRITE_STALL_SECONDS)
        elif state == LINGER:
            self._timer(conn, self.linger_timers, LINGER_SECONDS)
        else:  # QUEUED: the worker's business now, not the client's
            self._untime(conn)

    def _events(self, conn: Conn) -> None:
        mask = (_IN if conn.reading else 0) | (_OUT if conn.out else 0)
        try:
            self.poller.modify(conn.fd, mask)
        except OSError:
            pass

    def _linger(self, conn: Conn) -> None:
        if conn.client_closes and conn.reader.between_requests:
            # Nothing of the client's unread in our buffer, and it said it sends
            # no more: a plain close (a FIN, no reset) loses nothing.
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.reader.close()
        conn.reading = True
        self._set_state(conn, LINGER)
        self._events(conn)

    def _close(self, conn: Conn) -> None:
        if conn.fd < 0:
            return
        self._untime(conn)
        self.conns.pop(conn.fd, None)
        try:
            self.poller.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()
        conn.fd = -1
        conn.reader.close()
        self.stats.connections(-1)
        self.worker.board.connections[0] = len(self.conns)  # status shows it
        if (
            not self.listening
            and not self.stopping
            and len(self.conns) < self.max_connections
            and self.clock() >= self.accept_paused_until
        ):
            self._listen(True)

    def _close_all(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        self._listen(False)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self.poller.close()

    # -- timers -------------------------------------------------------------------

    def _timer(self, conn: Conn, timers: dict[Conn, float], seconds: float) -> None:
        old = conn.timer
        if old is not None:
            old.pop(conn, None)
        timers[conn] = self.clock() + seconds
        conn.timer = timers

    def _untime(self, conn: Conn) -> None:
        if conn.timer is not None:
            conn.timer.pop(conn, None)
            conn.timer = None

    def _next_deadline(self, now: float) -> float:
        """Seconds until the first deadline (-1: none, sleep until an event)."""
        first = -1.0
        for timers in (self.idle_timers, self.read_timers, self.write_timers, self.linger_timers):
            if timers:
                due = next(iter(timers.values()))
                if first < 0 or due < first:
                    first = due
        if not self.listening and self.accept_paused_until and not self.stopping:
            first = self.accept_paused_until if first < 0 else min(first, self.accept_paused_until)
        if first < 0:
            return -1.0
        return max(0.0, first - now + 0.0005)

    def _expire(self, now: float) -> None:
        for timers, action in (
            (self.idle_timers, self._close),
            (self.read_timers, self._read_timed_out),
            (self.write_timers, self._write_timed_out),
            (self.linger_timers, self._close),
        ):
            while timers:
                conn, due = next(iter(timers.items()))
                if due > now:
                    break
                del timers[conn]
                conn.timer = None
                action(conn)
        if (
            self.accept_paused_until
            and now >= self.accept_paused_until
            and not self.listening
            and not self.stopping
        ):
            self.accept_paused_until = 0.0
            if len(self.conns) < self.max_connections:
                self._listen(True)

    def _read_timed_out(self, conn: Conn) -> None:
        if conn.reader.between_requests:
            self._close(conn)  # nothing of a request came (a new connection): no answer owed
            return
        self._refuse(conn, HTTPError(408, "timeout", "request not read in time"))
        if conn.fd >= 0:
            self._after_response(conn)

    def _write_timed_out(self, conn: Conn) -> None:
        self.note("write_timeout", f"a client read nothing for {WRITE_STALL_SECONDS:g}s; closed")
        self._close(conn)

    # -- listening, stopping -------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self.listening:
            return
        for fd in self.listeners:
            try:
                if on:
                    # Not EPOLLEXCLUSIVE: a worker busy in the app does not
                    # accept, so the idle ones share new connections by racing.
                    self.poller.register(fd, select.EPOLLIN)
                else:
                    self.poller.unregister(fd)
            except (OSError, ValueError):
                pass
        self.listening = on

    def _watch_master(self) -> None:
        """A pidfd of the master: its death wakes us with no periodic check."""
        try:
            self._pidfd = os.pidfd_open(self.worker.master_pid)
        except (AttributeError, OSError):
            self._pidfd = -1
            return
        self.poller.register(self._pidfd, select.EPOLLIN)
        self.worker.check_master()

    def stop(self) -> None:
        """A graceful stop: accept no more; answer what was read; give each idle
        keep-alive connection a short while for one more request (answered with
        Connection: close), then close it."""
        if self.stopping:
            return
        self.stopping = True
        self._listen(False)
        # Not closed at once: the client may be sending its next request on it
        # right now, and would see a reset. Each connection's next answer says
        # Connection: close instead (_serve_ready), and an idle one that stays
        # idle for the grace is closed then.
        for conn in list(self.conns.values()):
            if conn.state == IDLE:
                self._timer(conn, self.idle_timers, STOP_GRACE_SECONDS)

    # -- writing --------------------------------------------------------------------

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = http_date(now)
        return self._date

    def send(self, conn: Conn, data: bytes | bytearray | memoryview) -> None:
        """Write what the socket takes now; keep the rest for the loop to write."""
        if conn.fd < 0:
            return
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            conn.closing = True
            return
        self.stats.bytes_out(sent)
        if sent < len(data):
            conn.out += memoryview(data)[sent:]

    def _flush(self, conn: Conn) -> None:
        out = conn.out
        try:
            sent = conn.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        self.stats.bytes_out(sent)
        del out[:sent]
        if out:
            self._timer(conn, self.write_timers, WRITE_STALL_SECONDS)
            return
        self._events(conn)
        self._after_response(conn)

    def _wait_writable(self, conn: Conn) -> None:
        try:
            ready = select.select([], [conn.fd], [], WRITE_STALL_SECONDS)[1]
        except (OSError, ValueError):
            raise ClientGone from None
        if not ready:
            self.note(
                "write_timeout", f"a client read nothing for {WRITE_STALL_SECONDS:g}s; closed"
            )
            raise ClientGone

    def stream(self, conn: Conn, data: bytes | bytearray | memoryview) -> None:
        """Write all of `data` now, waiting for the client (a streamed response)."""
        if conn.fd < 0:
            raise ClientGone
        if conn.out:
            pending = bytes(conn.out)
            conn.out.clear()
            self.stream(conn, pending)
        view = memoryview(data)
        sock = conn.sock
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                self._wait_writable(conn)
                continue
            except OSError:
                raise ClientGone from None
            self.stats.bytes_out(sent)
            view = view[sent:]

    def sendfile(self, conn: Conn, fd: int, offset: int, count: int) -> int:
        """os.sendfile `count` bytes from `offset` (waiting for the client); the
        bytes sent, fewer only if the file was shorter."""
        if conn.out:
            self.stream(conn, b"")
        total = 0
        out_fd = conn.fd
        while total < count:
            try:
                sent = os.sendfile(out_fd, fd, offset + total, min(count - total, 1 << 24))
            except (BlockingIOError, InterruptedError):
                self._wait_writable(conn)
                continue
            except OSError:
                raise ClientGone from None
            if sent == 0:
                break  # the file ended early
            self.stats.bytes_out(sent)
            total += sent
        return total

    def _refuse(self, conn: Conn, error: HTTPError) -> None:
        """Answer a request the server will not pass on, and close after it."""
        self.stats.refused(error.cause)
        self.note(error.cause, f"refused a request from {_peer(conn)}: {error.status} {error}")
        reason = REASONS.get(error.status, "Error")
        body = f"{error.status} {reason}\n".encode()
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\nDate: %s\r\nServer: unicornish\r\n\r\n"
            % (error.status, reason.encode(), len(body), self.date())
        )
        conn.closing = True
        conn.reading = False
        conn.reader.close()
        self.send(conn, head + body)

    def note(self, cause: str, message: str) -> None:
        """Log a problem caused by the network at most once per cause per 10 s."""
        if self._throttle.due(cause) is not None:
            self.log.warning("worker[%d] %s", self.worker.nr, message)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: float) -> bytes:
    """IMF-fixdate (RFC 9110): `Sun, 06 Nov 1994 08:49:37 GMT`, never localised
    (strftime's %a and %b follow the locale an app may set)."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode("ascii")


def _peer(conn: Conn) -> str:
    peer = conn.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a unix socket client"
