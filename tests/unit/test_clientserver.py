"""The bounded client server (host/clientserver.py) with a tiny conversation,
real sockets and the master's EventLoop, without starting a master: who gives
a slot up when all are taken, when it stops accepting, and its deadlines."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from unicornish.host.clientserver import Client, ClientServer, Limits
from unicornish.master.eventloop import EventLoop


class Echo:
    """One line in, `big` bytes (or the line) out; `bye` closes."""

    def __init__(self, big: int = 0) -> None:
        self.big = big
        self.timeouts = 0

    def admit(self, server: ClientServer, client: Client) -> bool:
        return True

    def pending(self, client: Client) -> bool:
        return b"\n" in client.inbuf

    def timed_out(self, client: Client) -> None:
        self.timeouts += 1

    def serve(self, server: ClientServer, client: Client) -> None:
        while b"\n" in client.inbuf and not client.outbuf and not client.closed:
            line, _, rest = bytes(client.inbuf).partition(b"\n")
            client.inbuf[:] = rest
            if line == b"bye":
                client.closing = True
            server.reply(client, b"x" * self.big + b"\n" if self.big else line + b"\n")
        if client.eof and not client.closed:
            server.close(client)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.selector.close()


def serve(loop: EventLoop, conversation: Echo, **limits: float) -> ClientServer:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    server = ClientServer(
        loop, logging.getLogger("test"), listener, Limits("test", 1024, **limits), conversation
    )
    server.install()
    return server


def turn(
    loop: EventLoop, server: ClientServer, until: Callable[[], bool], seconds: float = 2.0
) -> None:
    """Run the loop as the master does (the server's tick says when to wake)
    until `until()` holds, or `seconds` pass."""
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up and not until():
        wake = server.tick(time.monotonic())
        loop.wait(min(give_up, wake if wake is not None else give_up))


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def connect(server: ClientServer) -> socket.socket:
    sock = socket.create_connection(server.sock.getsockname())
    sock.settimeout(2)
    return sock


def test_when_full_the_client_waiting_longest_gives_its_slot_up(loop):
    server = serve(loop, Echo(), max_clients=2)
    first, second = connect(server), connect(server)
    try:
        turn(loop, server, lambda: len(server) == 2)
        second.sendall(b"hello\n")  # answered: it waits for its next request from now
        turn(loop, server, lambda: readable(second))
        assert second.recv(100) == b"hello\n"
        third = connect(server)
        third.sendall(b"hi\n")
        turn(loop, server, lambda: readable(third) and readable(first))
        assert first.recv(100) == b""  # the one silent since it connected
        assert third.recv(100) == b"hi\n"
        second.sendall(b"again\n")
        turn(loop, server, lambda: readable(second))
        assert second.recv(100) == b"again\n"
        third.close()
    finally:
        first.close()
        second.close()
        server.close_all(unlink=False)


def test_while_every_client_is_owed_a_reply_new_ones_wait_in_the_backlog(loop):
    # Replies larger than the socket buffers, to clients that do not read them.
    server = serve(loop, Echo(big=8 * 1024 * 1024), max_clients=2)
    readers = [connect(server), connect(server)]
    try:
        for sock in readers:
            sock.sendall(b"go\n")
        turn(loop, server, lambda: all(c.outbuf for c in server.clients) and len(server) == 2)
        waiting = connect(server)  # the kernel completes it; the master does not accept
        waiting.sendall(b"hi\n")
        turn(loop, server, lambda: not server.accepting)
        assert not server.accepting and len(server) == 2
        readers.pop().close()  # one done: the waiting one gets its slot
        turn(loop, server, lambda: readable(waiting))
        assert waiting.recv(100) == b"x" * 100
        waiting.close()
    finally:
        for sock in readers:
            sock.close()
        server.close_all(unlink=False)


def test_deadlines_are_the_servers_tick(loop):
    conversation = Echo()
    server = serve(loop, conversation, timeout=0.2)
    assert server.tick(time.monotonic()) is None  # nobody connected: no timer
    sock = connect(server)
    try:
        turn(loop, server, lambda: len(server) == 1)
        deadline = server.tick(time.monotonic())
        assert deadline is not None and deadline <= time.monotonic() + 0.2
        turn(loop, server, lambda: time.monotonic() >= deadline)
        assert server.tick(time.monotonic()) is None and conversation.timeouts == 1
        assert sock.recv(100) == b""
    finally:
        sock.close()
        server.close_all(unlink=False)


def test_a_last_reply_closes_the_connection(loop):
    server = serve(loop, Echo())
    sock = connect(server)
    try:
        sock.sendall(b"bye\n")
        turn(loop, server, lambda: readable(sock) and len(server) == 0)
        assert sock.recv(100) == b"bye\n"
        assert sock.recv(100) == b""
    finally:
        sock.close()
        server.close_all(unlink=False)


def test_a_client_that_has_only_just_connected_keeps_its_slot_for_its_grace(loop):
    server = serve(loop, Echo(), max_clients=1, grace=0.3)
    first = connect(server)
    try:
        turn(loop, server, lambda: len(server) == 1)
        accepted = time.monotonic()
        second = connect(server)  # waits in the backlog: `first` may be about to speak
        second.sendall(b"hi\n")
        turn(loop, server, lambda: not server.accepting)
        assert not readable(first)
        turn(loop, server, lambda: readable(second))  # the tick listens again after the grace
        assert time.monotonic() - accepted >= 0.3
        assert first.recv(100) == b"" and second.recv(100) == b"hi\n"
        second.close()
    finally:
        first.close()
        server.close_all(unlink=False)
