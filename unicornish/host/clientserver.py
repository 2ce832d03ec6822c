"""One bounded server of short conversations, run from a process's own loop.

The control socket (ctl/server.py) and the --metrics endpoint
(metrics/endpoint.py) serve clients from the master's loop, where nothing may
block and nothing may grow without bound; the HTTP worker to come wants the
same discipline. This module is that discipline, once; each server brings
only what it speaks (a Conversation: the control socket's lines of JSON,
HTTP's one request per connection). It lives in host/, beside the sockets it
accepts on, because it knows nothing of the master: it registers its fds with
whatever loop it is given (the Loop protocol below; the master's EventLoop is
one), and owns its deadlines (`tick(now) -> deadline`, None with nobody
connected: an idle master asks for no wake-up). No threads, no fixed ticks.

What a client may cost, whatever it sends or does not:
- one slot of Limits.max_clients. When every slot is taken, a new connection
  takes the slot of the client that has waited longest for its request (one
  that is silent, or sends its head a byte at a time), once that one has
  waited Limits.grace: a probe that sends its request at once is answered
  at once, whatever a few hundred slow clients do (issue 23 item 6). While
  every client is being answered, or has only just connected, new
  connections wait in the kernel's backlog, until one is done or has waited
  its grace;
- a request of at most Limits.max_request bytes: the server reads no more
  than one byte past it without a complete request, and the Conversation
  refuses it;
- Limits.timeout: from accept to the last byte of the reply, or, for a
  connection that stays open for more requests (Limits.idle), of silence;
- one bounded recv() or send() per wake-up, and at most Limits.accepts_per_wake
  accepts, so a flood cannot hog the loop. When accept() fails for lack of
  fds, the server stops listening for Limits.accept_pause (no busy loop on a
  listener that stays readable).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from unicornish.host.sockets import accept_some

Callback = Callable[[], None]


class Loop(Protocol):
    """What the server needs of the loop it runs in (master/eventloop.py's EventLoop)."""

    def add_reader(self, fd: Any, callback: Callback) -> None: ...

    def set_events(self, fd: Any, events: int, callback: Callback) -> None: ...

    def remove(self, fd: Any) -> None: ...

    def close_in_child(self, close: Callback) -> None: ...


@dataclass(frozen=True)
class Limits:
    name: str  # "control", "metrics": what the log lines start with
    max_request: int  # bytes of one request (a line, a head)
    timeout: float = 5.0
    # True: a connection open for many requests, dropped after `timeout` of silence.
    # False: `timeout` counts from accept, for the one request and its reply.
    idle: bool = False
    max_clients: int = 64
    # A client gives its slot up only after waiting this long for its request:
    # one that has just connected may not have had the time to send it.
    grace: float = 0.0
    accepts_per_wake: int = 16
    accept_pause: float = 1.0
    # After a last reply with bytes still coming that we will not read: read and
    # drop them this long, so that closing does not reset the connection (TCP
    # would destroy the reply in flight).
    linger: float = 1.0
    recv_size: int = 65536


class Client:
    __slots__ = (
        "sock",
        "peer",
        "inbuf",
        "outbuf",
        "deadline",
        "since",
        "events",
        "eof",
        "closing",
        "unread",
        "lingering",
    )

    def __init__(self, sock: socket.socket, now: float, timeout: float) -> None:
        self.sock = sock
        self.peer: Any = None  # what the Conversation learnt at admit (a unix peer's pid, uid)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = now + timeout
        self.since = now  # waiting for a request since: accept, or the last reply
        self.events = selectors.EVENT_READ
        self.eof = False  # the client shut down its side
        self.closing = False  # close once `outbuf` is sent
        self.unread = False  # with `closing`: bytes may still come; linger first
        self.lingering = False

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0


class Conversation(Protocol):
    """What a server speaks; the ClientServer calls it, it answers with reply()."""

    def admit(self, server: ClientServer, client: Client) -> bool:
        """A new connection: False refuses it (the conversation may have sent why)."""
        ...

    def serve(self, server: ClientServer, client: Client) -> None:
        """Bytes came (or EOF): answer the complete requests in `client.inbuf`;
        set `client.closing` after the last reply."""
        ...

    def pending(self, client: Client) -> bool:
        """A complete request waits in `client.inbuf` (read nothing more until it is answered)."""
        ...

    def timed_out(self, client: Client) -> None:
        """The client is dropped at its deadline (to log it, if worth a line)."""
        ...


class SocketPath:
    """A unix listener's file: whether it is still ours (the same inode), moved
    aside for a new master (USR2) and back, removed when we exit."""

    def __init__(self, path: str) -> None:
        self.original = self.path = path
        try:
            st = os.lstat(path)
            self.inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            self.inode = None

    @classmethod
    def of(cls, sock: socket.socket) -> SocketPath | None:
        if sock.family != socket.AF_UNIX:
            return None
        name = sock.getsockname()
        return cls(name) if isinstance(name, str) and name else None

    def is_ours(self, path: str | None = None) -> bool:
        try:
            st = os.lstat(self.path if path is None else path)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and self.inode == (st.st_dev, st.st_ino)

    @property
    def aside(self) -> bool:
        return self.path != self.original

    def rename(self, to: str) -> None:
        """Raises OSError."""
        os.rename(self.path, to)
        self.path = to

    def unlink(self) -> None:
        if self.is_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass


class ClientServer:
    def __init__(
        self,
        loop: Loop,
        log: logging.Logger,
        sock: socket.socket,
        limits: Limits,
        conversation: Conversation,
        file: SocketPath | None = None,
    ) -> None:
        self.loop = loop
        self.log = log
        self.sock = sock
        self.limits = limits
        self.conversation = conversation
        self.file = file if file is not None else SocketPath.of(sock)
        self.by_fd: dict[int, Client] = {}
        self.accepting = False
        self.paused_until: float | None = None
        self.handed_over = False  # USR2: a new master accepts on our socket now
        self.full_logged_at: dict[str, float] = {}

    def install(self) -> None:
        self._listen()
        self.loop.close_in_child(self.close_in_child)

    @property
    def clients(self) -> list[Client]:
        return list(self.by_fd.values())

    def __iter__(self) -> Iterator[Client]:
        return iter(self.clients)

    def __len__(self) -> int:
        return len(self.by_fd)

    # -- listening -------------------------------------------------------------------

    def _listen(self) -> None:
        """Accept while there is a slot, or a client that can give its slot up."""
        want = not self.handed_over and self.paused_until is None and self._room(quiet=True)
        if want and not self.accepting:
            self.loop.add_reader(self.sock, self._on_accept)
        elif not want and self.accepting:
            self.loop.remove(self.sock)
        self.accepting = want

    def hand_over(self) -> None:
        """USR2: the new master accepts on the socket; we stop."""
        self.handed_over = True
        self._listen()

    def take_back(self) -> None:
        """The new master died: serve again."""
        self.handed_over = False
        self._listen()

    def _on_accept(self) -> None:
        starved = accept_some(self.sock, self._admit, self.limits.accepts_per_wake, self._room)
        if starved is not None:
            self.log.error(
                "%s: cannot accept: %s; not listening for %gs",
                self.limits.name,
                starved.strerror,
                self.limits.accept_pause,
            )
            self.paused_until = time.monotonic() + self.limits.accept_pause
        self._listen()

    def _room(self, quiet: bool = False) -> bool:
        """Whether the next connection gets a slot: a free one, or one given up (_admit)."""
        if len(self.by_fd) < self.limits.max_clients or self._longest_waiting() is not None:
            return True
        if not quiet:
            self._full("the next ones wait")
        return False

    def _full(self, what: str) -> None:
        now = time.monotonic()
        if now - self.full_logged_at.get(what, -1e9) >= self.limits.timeout:
            self.full_logged_at[what] = now
            self.log.warning(
                "%s: %d connections open; %s", self.limits.name, self.limits.max_clients, what
            )

    def _longest_waiting(self) -> Client | None:
        """The client waiting longest for its request, past its grace, and owed nothing."""
        waiting = [c for c in self.by_fd.values() if self._waiting(c)]
        if not waiting:
            return None
        longest = min(waiting, key=lambda c: c.since)
        return longest if time.monotonic() - longest.since >= self.limits.grace else None

    def _waiting(self, client: Client) -> bool:
        return not (
            client.outbuf or client.closing or client.lingering or self.conversation.pending(client)
        )

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        client = Client(conn, time.monotonic(), self.limits.timeout)
        if not self.conversation.admit(self, client):
            conn.close()
            return
        if len(self.by_fd) >= self.limits.max_clients:
            victim = self._longest_waiting()
            if victim is not None:  # _room() saw one, and nothing ran since
                self._full("closing the one that waited longest for its request")
                self.close(victim)
        self.by_fd[conn.fileno()] = client
        self.loop.add_reader(conn, lambda: self._on_event(client))

    # -- the loop's side -----------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Drop clients past their deadline, listen again after a pause; the next
        such deadline, or None when nobody is connected (no timer at all)."""
        for client in self.clients:
            if now >= client.deadline:
                if not client.lingering:
                    self.conversation.timed_out(client)
                self.close(client)
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
        if not self.accepting:
            self._listen()
        deadlines = [c.deadline for c in self.by_fd.values()]
        if self.paused_until is not None:
            deadlines.append(self.paused_until)
        elif not self.accepting and not self.handed_over:
            # Full of clients that have only just connected: listen again when
            # the first of them has waited its grace.
            waiting = [c.since for c in self.by_fd.values() if self._waiting(c)]
            if waiting:
                deadlines.append(min(waiting) + self.limits.grace)
        return min(deadlines) if deadlines else None

    def _on_event(self, client: Client) -> None:
        if client.outbuf:
            if not self._send(client) or client.outbuf or client.closing:
                return
        elif client.lingering:
            self._drain(client)
            return
        elif not client.eof and not self.conversation.pending(client):
            if not self._recv(client):
                return
        self.conversation.serve(self, client)
        if not client.closed:
            self._settle(client)
        if not self.accepting:
            self._listen()

    def _recv(self, client: Client) -> bool:
        # Never more than one byte past a request's limit: enough for the
        # Conversation to refuse it, whatever the client sends.
        room = self.limits.max_request + 1 - len(client.inbuf)
        if room <= 0:
            return True
        try:
            data = client.sock.recv(min(self.limits.recv_size, room))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.close(client)
            return False
        if not data:
            client.eof = True
        else:
            client.inbuf += data
            self._progress(client)
        return True

    def _send(self, client: Client) -> bool:
        """False when the client is gone."""
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.close(client)
            return False
        if sent:
            del client.outbuf[:sent]
            self._progress(client)
        if not client.outbuf and client.closing:
            self._settle(client)  # the last reply is out: close (or linger) now
        return not client.closed

    def _progress(self, client: Client) -> None:
        if self.limits.idle:
            client.deadline = time.monotonic() + self.limits.timeout

    def reply(self, client: Client, data: bytes) -> bool:
        """Queue a reply and send what the socket takes now; False when the client
        is gone (a send failed, or it was the last reply and is out)."""
        client.outbuf += data
        client.since = time.monotonic()
        return self._send(client)

    def _settle(self, client: Client) -> None:
        """After a turn: close, linger, or wait to write or to read."""
        if client.closed:
            return
        if not client.outbuf and client.closing and not client.lingering:
            if not client.unread:
                self.close(client)
                return
            # The reply is out; the client may still be sending what we refused to
            # read. Say we are done, then drop its bytes until it closes.
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(client)
                return
            client.lingering = True
            client.deadline = min(client.deadline, time.monotonic() + self.limits.linger)
        if client.outbuf or (not client.closing and self.conversation.pending(client)):
            # Writable fires at once: that is how the rest of a pipelined batch gets its turn.
            events = selectors.EVENT_WRITE
        else:
            events = selectors.EVENT_READ
        if events != client.events:
            client.events = events
            try:
                self.loop.set_events(client.sock, events, lambda: self._on_event(client))
            except (KeyError, ValueError, OSError):
                self.close(client)

    def _drain(self, client: Client) -> None:
        try:
            data = client.sock.recv(self.limits.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(client)

    def close(self, client: Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.by_fd.pop(fd, None)
            self.loop.remove(client.sock)
        client.sock.close()
        if not self.accepting:
            self._listen()

    # -- exit and fork -----------------------------------------------------------------

    def close_all(self, unlink: bool) -> None:
        """The process exits: flush what can be flushed, close every client and the
        socket; remove a unix socket's file when asked and still ours."""
        for client in self.clients:
            if client.outbuf:
                try:
                    client.sock.send(client.outbuf)
                except OSError:
                    pass
            client.sock.close()
        self.by_fd.clear()
        self.handed_over = True  # listen no more
        self._listen()
        self.sock.close()
        if unlink and self.file is not None:
            self.file.unlink()

    def close_in_child(self) -> None:
        """In a forked child: drop our copies of the fds, touching nothing else."""
        for client in self.by_fd.values():
            client.sock.close()
        self.sock.close()
