"""The systemd notify protocol and socket activation, without libsystemd."""

from __future__ import annotations

import array
import os
import select
import socket
import time
from typing import Protocol

from unicornish.host import log

SD_LISTEN_FDS_START = 3

# How long a barrier waits for systemd to have read our earlier messages.
BARRIER_TIMEOUT = 5.0


def monotonic_usec() -> str:
    """`MONOTONIC_USEC=...`, which systemd wants beside RELOADING=1."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; silent otherwise.

    `quiet` is set in an old master while a new one it started may take over
    as systemd's main process: from then on only WATCHDOG=1 goes out (the old
    master is still the main pid until the hand-over), never READY/STATUS or
    STOPPING=1, which systemd would read as the whole service stopping.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.error: str | None = None
        self.quiet = False
        if self.path and not (self.path.startswith("/") or self.path.startswith("@")):
            self.error = f"NOTIFY_SOCKET={self.path!r} is not a socket path; notifications are off"
            self.path = ""
        self._sock: socket.socket | None = None
        self._logged: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def _address(self) -> str:
        return "\0" + self.path[1:] if self.path.startswith("@") else self.path

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return self._sock

    def send(self, *lines: str) -> bool:
        if not self.path:
            return False
        if self.quiet and not all(line.startswith("WATCHDOG=") for line in lines):
            return False
        try:
            self._socket().sendto("\n".join(lines).encode(), self._address())
        except OSError as exc:
            self.error = f"cannot notify systemd at {self.path}: {exc.strerror or exc}"
            if self.error != self._logged:  # one line per new failure, not one per message
                self._logged = self.error
                log.get_logger().warning("%s", self.error)
            return False
        self._logged = None
        return True

    def barrier(self, timeout: float = BARRIER_TIMEOUT) -> bool:
        """sd_notify_barrier(): wait until systemd has read everything sent so far.

        BARRIER=1 goes with one end of a pipe; systemd closes it once it has
        processed the messages before it. True when that was seen in time.
        """
        if not self.path:
            return False
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            try:
                self._socket().sendmsg(
                    [b"BARRIER=1"],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))],
                    0,
                    self._address(),
                )
            except OSError as exc:
                self.error = f"cannot notify systemd at {self.path}: {exc.strerror or exc}"
                return False
            os.close(write_fd)
            write_fd = -1
            poller = select.poll()
            poller.register(read_fd, select.POLLHUP)
            return bool(poller.poll(timeout * 1000))
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Stopping(Protocol):
    """The master's state, as far as the watchdog reads it."""

    @property
    def stopping_workers(self) -> bool: ...


class Watchdog:
    """WATCHDOG=1 every WATCHDOG_USEC/2, stopping included (a graceful stop can
    outlast the watchdog); not after a hand-over, when the new master pings."""

    def __init__(self, notifier: Notifier, master: Stopping) -> None:
        self.notifier = notifier
        self.master = master
        self.interval = watchdog_interval()
        self.next_ping = 0.0

    def tick(self, now: float) -> float | None:
        if self.interval is None or (self.master.stopping_workers and self.notifier.quiet):
            return None
        if now >= self.next_ping:
            self.notifier.send("WATCHDOG=1")
            self.next_ping = now + self.interval
        return self.next_ping
