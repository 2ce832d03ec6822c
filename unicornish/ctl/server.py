"""The master's side of the control socket (`--control PATH`).

A unix stream socket, created with mode 0600, whose peers are checked with
SO_PEERCRED: only root and the master's own uid may talk to it; anyone else
is refused and logged. Everything is non-blocking and driven by the master's
selector: a client is a buffer in, a buffer out and a deadline, so a slow,
silent, malformed or oversized client costs the master one bounded recv()
per wake-up and nothing more.

Protocol: one request per line, one JSON reply per line, in order, on a
connection that stays open until the client closes it (or is silent for
CLIENT_TIMEOUT). A request is a JSON object, or the same words `unicornish
ctl` takes, for `socat`/`nc -U` users:

    {"command": "status"}                      status
    {"command": "scale", "workers": 7}         scale 7
    {"command": "ttin"} / {"command": "ttou"}  ttin / ttou
    {"command": "reload"}                      reload
    {"command": "reopen"}                      reopen
    {"command": "stop"}                        stop
    {"command": "stop", "quick": true}         stop --quick
    {"command": "upgrade"}                     upgrade
    {"command": "metrics"}                     metrics
    {"command": "refork"}                      refork

Replies: {"ok": true, ...} or {"ok": false, "error": "..."}. Commands run
the same code as the signals (scale = TTIN/TTOU, reload = HUP, reopen = USR1,
stop = QUIT/TERM, upgrade = USR2); `metrics` replies with the text that
--metrics serves at /metrics, in {"ok": true, "text": "..."}.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from unicornish.errors import StartupError
from unicornish.host.sockets import accept_some
from unicornish.master.children import WorkerProc
from unicornish.master.eventloop import Clients, EventLoop
from unicornish.metrics.procstats import StatsReader
from unicornish.protocol import (
    MAX_LINE,
    RequestError,
    describe_request,
    parse_request,
)
from unicornish.scoreboard import BUSY

# A client that sends nothing (or reads nothing) for this long is dropped.
CLIENT_TIMEOUT = 5.0
# More connections than this at once are refused (each costs an fd).
MAX_CLIENTS = 64
# Connections accepted per wake-up, so a flood cannot hog the loop.
ACCEPTS_PER_WAKE = 16
# Requests answered per client per wake-up; the rest wait for the next turn.
LINES_PER_WAKE = 8
# After accept() fails for lack of fds, stop listening this long (no busy loop).
ACCEPT_PAUSE = 1.0
RECV_SIZE = 65536

_PEERCRED = struct.Struct("3i")


class Commands(Protocol):
    """What the control socket asks of the master: the same code as the signals."""

    @property
    def stopping(self) -> str | None: ...

    @property
    def wanted(self) -> int: ...

    def status(self) -> dict[str, Any]: ...

    def stop(self, quick: bool, why: str) -> None: ...

    def scale(self, wanted: int, why: str) -> None: ...

    def step(self, delta: int, why: str) -> None: ...

    def reload(self, why: str) -> str | None: ...

    def reopen_logs(self) -> str | None: ...

    def upgrade(self, why: str) -> tuple[int | None, str | None]: ...

    def metrics_text(self) -> str: ...

    def refork(self) -> str | None: ...


# -- creating the socket ------------------------------------------------------


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
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
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return sock


# -- status -------------------------------------------------------------------


def collect_status(
    master: dict[str, Any], procs: Iterable[WorkerProc], stats: StatsReader
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


def error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


# -- the server -----------------------------------------------------------------


class Client:
    __slots__ = ("sock", "pid", "uid", "inbuf", "outbuf", "deadline", "eof", "closing", "events")

    def __init__(self, sock: socket.socket, pid: int, uid: int, deadline: float) -> None:
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = deadline
        self.eof = False
        self.closing = False
        self.events = selectors.EVENT_READ

    def has_line(self) -> bool:
        return b"\n" in self.inbuf

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0


class ControlServer:
    def __init__(
        self,
        loop: EventLoop,
        log: logging.Logger,
        commands: Commands,
        sock: socket.socket,
        path: str,
    ) -> None:
        self.loop = loop
        self.commands = commands
        self.sock = sock
        self.path = path
        self.original_path = path
        self.log = log
        self.uid = os.geteuid()
        self.clients: Clients[Client] = Clients(loop)
        self.paused_until: float | None = None
        self.refused_logged_at = -1e9
        try:
            st = os.lstat(path)
            self.inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            self.inode = None

    def install(self) -> None:
        self.loop.add_reader(self.sock, self._on_accept)
        self.loop.close_in_child(self.close_in_child)

    # -- the loop's side -----------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Drop silent clients, listen again after a pause; the next such deadline."""
        for client in self.clients:
            if now >= client.deadline:
                self.log.info(
                    "control: dropped a client (pid=%d) silent for %gs", client.pid, CLIENT_TIMEOUT
                )
                self._close(client)
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            try:
                self.loop.add_reader(self.sock, self._on_accept)
            except (KeyError, ValueError, OSError):
                pass
        deadlines = [c.deadline for c in self.clients]
        if self.paused_until is not None:
            deadlines.append(self.paused_until)
        return min(deadlines) if deadlines else None

    def _on_accept(self) -> None:
        starved = accept_some(self.sock, self._admit, ACCEPTS_PER_WAKE)
        if starved is not None:
            self.log.error(
                "control: cannot accept: %s; not listening for %gs", starved.strerror, ACCEPT_PAUSE
            )
            self._pause()

    def _pause(self) -> None:
        self.loop.remove(self.sock)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            pid, uid, gid = _PEERCRED.unpack(raw)
        except OSError:
            conn.close()
            return
        if uid != 0 and uid != self.uid:
            self.log.warning(
                "control: refused a connection from pid=%d uid=%d gid=%d: "
                "only root and uid %d may control this master",
                pid,
                uid,
                gid,
                self.uid,
            )
            _send_and_close(conn, error("permission denied"))
            return
        if len(self.clients) >= MAX_CLIENTS:
            now = time.monotonic()
            if now - self.refused_logged_at >= CLIENT_TIMEOUT:
                self.refused_logged_at = now
                self.log.warning(
                    "control: %d connections open; refusing more (pid=%d)", MAX_CLIENTS, pid
                )
            _send_and_close(conn, error("too many control connections"))
            return
        client = Client(conn, pid, uid, time.monotonic() + CLIENT_TIMEOUT)
        self.clients.add(client, self._callback(client))

    def _callback(self, client: Client) -> Callable[[], None]:
        return lambda: self._on_event(client)

    def _on_event(self, client: Client) -> None:
        if client.outbuf:
            if not self._send(client):
                return
        elif not client.eof and not client.closing and not client.has_line():
            if not self._recv(client):
                return
        self._pump(client)

    def _recv(self, client: Client) -> bool:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(client)
            return False
        if not data:
            client.eof = True
        else:
            client.inbuf += data
            client.deadline = time.monotonic() + CLIENT_TIMEOUT
        return True

    def _send(self, client: Client) -> bool:
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(client)
            return False
        if sent:
            del client.outbuf[:sent]
            client.deadline = time.monotonic() + CLIENT_TIMEOUT
        return True

    def _pump(self, client: Client) -> None:
        """Answer complete lines, one reply at a time, while the client reads them."""
        for _ in range(LINES_PER_WAKE):
            if client.outbuf:
                if not self._send(client):
                    return
                if client.outbuf:
                    break
            if client.closing:
                break
            newline = client.inbuf.find(b"\n")
            if newline > MAX_LINE or (newline < 0 and len(client.inbuf) > MAX_LINE):
                client.inbuf.clear()
                client.outbuf += encode(error(f"request line too long (limit {MAX_LINE} bytes)"))
                client.closing = True
                continue
            if newline < 0:
                if client.eof:
                    # A last request without its newline (printf status | nc -U ...).
                    line = bytes(client.inbuf)
                    client.inbuf.clear()
                    client.closing = True
                    if line.strip():
                        self._answer(client, line)
                        if client.closed:
                            return
                    continue
                break
            line = bytes(client.inbuf[:newline])
            del client.inbuf[: newline + 1]
            self._answer(client, line)
            if client.closed:
                return
        if client.closed:
            return
        if client.closing and not client.outbuf:
            self._close(client)
            return
        self._update_events(client)

    def _update_events(self, client: Client) -> None:
        if client.outbuf or (client.has_line() and not client.closing):
            # Writable fires at once: that is how the rest of a pipelined batch gets its turn.
            events = selectors.EVENT_WRITE
        else:
            events = selectors.EVENT_READ
        if not self.clients.set_events(client, events, self._callback(client)):
            self._close(client)

    def _close(self, client: Client) -> None:
        self.clients.close(client)

    # -- commands ----------------------------------------------------------------------

    def _answer(self, client: Client, line: bytes) -> None:
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            client.outbuf += encode(error("bad request: not UTF-8"))
            return
        if not text:
            return
        try:
            command, params = parse_request(text)
        except RequestError as exc:
            client.outbuf += encode(error(str(exc)))
            return
        if command != "status":
            self.log.info(
                "control: %s from pid=%d uid=%d",
                describe_request(command, params),
                client.pid,
                client.uid,
            )
        try:
            reply = self.run(command, params)
        except Exception as exc:  # noqa: BLE001 - a bug in one command must not take the master down
            self.log.exception("control: %s failed", command)
            reply = error(f"internal error: {type(exc).__name__}: {exc}")
        client.outbuf += encode(reply)
        if command == "stop" and reply.get("ok"):
            client.closing = True
        # Send at once: `stop` must be answered before the master exits.
        self._send(client)

    def run(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        m = self.commands
        if command == "status":
            return {"ok": True, **m.status()}
        if command == "stop":
            m.stop(quick=params["quick"], why="control stop")
            return {"ok": True, "stopping": m.stopping}
        if command == "metrics":  # read-only, like status: answered while stopping too
            try:
                return {"ok": True, "text": m.metrics_text()}
            except StartupError as exc:  # prometheus_client is not installed
                return error(str(exc).replace("--metrics needs", "metrics need"))
        if command == "reopen":  # as USR1: a stop may outlast a log rotation
            failure = m.reopen_logs()
            return error(failure) if failure else {"ok": True}
        if m.stopping:
            self.log.info("control %s ignored: master is stopping", command)
            return error("master is stopping")
        if command == "scale":
            m.scale(params.get("workers", m.wanted), f"control {describe_request(command, params)}")
            return {"ok": True, "workers_wanted": m.wanted}
        if command in ("ttin", "ttou"):
            # As the signals: one more or one fewer (with MIN:MAX, the bounds move too).
            m.step(1 if command == "ttin" else -1, f"control {command}")
            return {"ok": True, "workers_wanted": m.wanted}
        if command == "reload":
            failure = m.reload(why="control reload")
            return error(failure) if failure else {"ok": True, "workers_wanted": m.wanted}
        if command == "upgrade":
            pid, refusal = m.upgrade(why="control upgrade")
            if pid is None:
                return error(refusal or "upgrade failed; see the master's log")
            return {"ok": True, "new_master_pid": pid}
        if command == "refork":
            failure = m.refork()
            return error(failure) if failure else {"ok": True}
        return error(f"unknown command {command!r}")

    # -- USR2 and exit -----------------------------------------------------------------

    def _is_ours(self, path: str) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return self.inode == (st.st_dev, st.st_ino)

    def move_aside(self) -> None:
        """USR2: PATH becomes PATH.oldbin, so the new master can bind PATH."""
        aside = self.original_path + ".oldbin"
        if self.path == self.original_path and self._is_ours(self.path):
            try:
                os.rename(self.path, aside)
                self.path = aside
            except OSError as exc:
                self.log.error(
                    "cannot rename control socket %s: %s", self.path, exc.strerror or exc
                )

    def move_back(self) -> None:
        """The new master died: take PATH back, unless someone else answers there."""
        if self.path == self.original_path or not self._is_ours(self.path):
            return
        if os.path.lexists(self.original_path):
            try:
                if _answers(self.original_path):
                    return
            except StartupError:
                return
        try:
            os.rename(self.path, self.original_path)
            self.path = self.original_path
        except OSError as exc:
            self.log.error(
                "cannot restore control socket %s: %s", self.original_path, exc.strerror or exc
            )

    def close(self) -> None:
        """The master exits: flush what can be flushed, close, remove our socket file."""
        for client in self.clients:
            if client.outbuf:
                self._send(client)
            self._close(client)
        self.loop.remove(self.sock)
        self.sock.close()
        if self._is_ours(self.path):
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close_in_child(self) -> None:
        """In a new worker: drop our copies of the fds, touching nothing else."""
        for client in self.clients:
            client.sock.close()
        self.sock.close()


def _send_and_close(conn: socket.socket, reply: dict[str, Any]) -> None:
    try:
        conn.send(encode(reply))
    except OSError:
        pass
    conn.close()
