"""The master's side of the control socket (`--control PATH`).

A unix stream socket, created with mode 0600, whose peers are checked with
SO_PEERCRED: only root and the master's own uid may talk to it; anyone else
is refused and logged. It is served by the bounded client server
(host/clientserver.py) in the master's loop: a client is a buffer in, a
buffer out and a deadline, so a slow, silent, malformed or oversized client
costs the master one bounded recv() per wake-up and nothing more.

Protocol: one request per line, one JSON reply per line, in order, on a
connection that stays open until the client closes it (or is silent for
CLIENT_TIMEOUT). The requests, their replies and what each runs on the master
are declared once, in ctl/commands.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Iterable
from typing import Any, Protocol

from unicornish.ctl import commands as table
from unicornish.ctl.commands import MAX_LINE, Commands, RequestError, error, parse_request
from unicornish.errors import StartupError
from unicornish.host.clientserver import Client, ClientServer, Limits, Loop, SocketPath
from unicornish.metrics.procstats import StatsReader
from unicornish.scoreboard import BUSY, Scoreboard

# Connections waiting for the master to accept them: 500 `status` calls at
# once wait their turn here instead of being refused (the client waits too).
BACKLOG = 1024
_PEERCRED = struct.Struct("3i")


# -- creating the socket ------------------------------------------------------


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True  # EAGAIN: a master listens there, its backlog full
    except PermissionError:
        raise StartupError(
            f"control socket {path} exists and is not ours (permission denied)"
        ) from None
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind(path: str) -> socket.socket:
    """Create the listening socket at `path`, mode 0600. Raises StartupError."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise StartupError(f"control socket directory does not exist: {directory}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StartupError(f"control socket {path}: {exc.strerror or exc}") from None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"control socket {path} exists and is not a socket")
        if _answers(path):
            raise StartupError(f"already running: a master answers on control socket {path}")
        try:
            os.unlink(path)  # stale: left by a master that was killed
        except OSError as exc:
            raise StartupError(
                f"cannot remove stale control socket {path}: {exc.strerror or exc}"
            ) from None
    sock = socket.socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    # The umask makes bind() create the file 0600 from the start: no window in
    # which another user could connect before a chmod.
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return sock


# -- status -------------------------------------------------------------------


class Child(Protocol):
    """What `status` shows of a worker (master/children.py's WorkerProc)."""

    nr: int
    pid: int
    board: Scoreboard
    spawned_at: float


def collect_status(
    master: dict[str, Any], procs: Iterable[Child], stats: StatsReader
) -> dict[str, Any]:
    """The JSON of `status`: the master's own figures, then one entry per worker."""
    now = time.monotonic()
    ordered = sorted(procs, key=lambda w: (w.nr, w.spawned_at))
    wall = time.time()  # cpu percent: the process's lifetime, from its start time
    figures = stats.read([w.pid for w in ordered], wall)
    workers = []
    for w in ordered:
        board = w.board
        beat = board.beat_time()
        entry: dict[str, Any] = {
            "nr": w.nr,
            "pid": w.pid,
            "age": round(now - w.spawned_at, 3),
            "state": board.state_name(),
            "tasks": board.task_count(),
            "connections": board.connection_count(),
            "task_age": round(max(0.0, now - beat), 3)
            if beat and int(board.state[0]) == BUSY
            else None,
        }
        entry.update(figures[w.pid])
        workers.append(entry)
    return {"master": master, "workers": workers}


# -- requests -------------------------------------------------------------------


def encode(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply, separators=(", ", ": ")) + "\n").encode()


# -- the server -----------------------------------------------------------------

# A client that sends nothing (or reads nothing) for this long is dropped.
CLIENT_TIMEOUT = 5.0
# Connections at once (each costs an fd): past this, the one silent longest
# gives its slot up; while all are being answered, the next wait in the backlog.
MAX_CLIENTS = 64
# Requests answered per client per wake-up; the rest wait for the next turn.
LINES_PER_WAKE = 8
# Past the limit, a client silent this long gives its slot up: hundreds of
# `status` calls at once each have the time to send their request.
GRACE = 1.0
LIMITS = Limits(
    "control",
    max_request=MAX_LINE,
    timeout=CLIENT_TIMEOUT,
    idle=True,
    max_clients=MAX_CLIENTS,
    grace=GRACE,
)


class ControlServer:
    """The control socket's conversation: lines of JSON (or words) in, one JSON
    line out for each, in order; served by a ClientServer in the master's loop."""

    def __init__(
        self,
        loop: Loop,
        log: logging.Logger,
        commands: Commands,
        sock: socket.socket,
        path: str,
    ) -> None:
        self.commands = commands
        self.log = log
        self.uid = os.geteuid()
        self.file = SocketPath(path)
        self.server = ClientServer(loop, log, sock, LIMITS, self, self.file)

    def install(self) -> None:
        self.server.install()

    def tick(self, now: float) -> float | None:
        return self.server.tick(now)

    @property
    def clients(self) -> list[Client]:
        return self.server.clients

    # -- the conversation ------------------------------------------------------------

    def admit(self, server: ClientServer, client: Client) -> bool:
        try:
            raw = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            pid, uid, gid = _PEERCRED.unpack(raw)
        except OSError:
            return False
        if uid != 0 and uid != self.uid:
            self.log.warning(
                "control: refused a connection from pid=%d uid=%d gid=%d: "
                "only root and uid %d may control this master",
                pid,
                uid,
                gid,
                self.uid,
            )
            try:
                client.sock.send(encode(error("permission denied")))
            except OSError:
                pass
            return False
        client.peer = (pid, uid)
        return True

    def pending(self, client: Client) -> bool:
        return not client.closing and b"\n" in client.inbuf

    def timed_out(self, client: Client) -> None:
        self.log.info(
            "control: dropped a client (pid=%d) silent for %gs", client.peer[0], CLIENT_TIMEOUT
        )

    def serve(self, server: ClientServer, client: Client) -> None:
        """Answer complete lines, one reply at a time, while the client reads them."""
        for _ in range(LINES_PER_WAKE):
            if client.outbuf or client.closing or client.closed:
                return
            newline = client.inbuf.find(b"\n")
            if newline > MAX_LINE or (newline < 0 and len(client.inbuf) > MAX_LINE):
                client.inbuf.clear()
                client.closing = True
                too_long = f"request line too long (limit {MAX_LINE} bytes)"
                server.reply(client, encode(error(too_long)))
                return
            if newline < 0:
                if client.eof:
                    # A last request without its newline (printf status | nc -U ...).
                    line = bytes(client.inbuf)
                    client.inbuf.clear()
                    client.closing = True
                    if line.strip():
                        self._answer(server, client, line)
                return
            line = bytes(client.inbuf[:newline])
            del client.inbuf[: newline + 1]
            self._answer(server, client, line)

    def _answer(self, server: ClientServer, client: Client, line: bytes) -> None:
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            server.reply(client, encode(error("bad request: not UTF-8")))
            return
        if not text:
            return
        try:
            command, params = parse_request(text)
        except RequestError as exc:
            server.reply(client, encode(error(str(exc))))
            return
        declared = table.BY_NAME[command]
        pid, uid = client.peer
        if declared.logged:
            self.log.info("control: %s from pid=%d uid=%d", declared.describe(params), pid, uid)
        try:
            reply = table.run(command, params, self.commands, self.log)
        except Exception as exc:  # noqa: BLE001 - a bug in one command must not take the master down
            self.log.exception("control: %s failed", command)
            reply = error(f"internal error: {type(exc).__name__}: {exc}")
        if declared.last and reply.get("ok"):
            client.closing = True
        # Sent at once: `stop` must be answered before the master exits.
        server.reply(client, encode(reply))

    # -- USR2 and exit -----------------------------------------------------------------

    def move_aside(self) -> None:
        """USR2: PATH becomes PATH.oldbin, so the new master can bind PATH."""
        if self.file.aside or not self.file.is_ours():
            return
        try:
            self.file.rename(self.file.original + ".oldbin")
        except OSError as exc:
            why = exc.strerror or exc
            self.log.error("cannot rename control socket %s: %s", self.file.path, why)

    def move_back(self) -> None:
        """The new master died: take PATH back, unless someone else answers there."""
        if not self.file.aside or not self.file.is_ours():
            return
        if os.path.lexists(self.file.original):
            try:
                if _answers(self.file.original):
                    return
            except StartupError:
                return
        try:
            self.file.rename(self.file.original)
        except OSError as exc:
            self.log.error(
                "cannot restore control socket %s: %s", self.file.original, exc.strerror or exc
            )

    def close(self) -> None:
        """The master exits: flush what can be flushed, close, remove our socket file."""
        self.server.close_all(unlink=True)

    def close_in_child(self) -> None:
        """In a new worker: drop our copies of the fds, touching nothing else."""
        self.server.close_in_child()
