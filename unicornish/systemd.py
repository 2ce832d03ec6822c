"""The systemd notify protocol and socket activation, without libsystemd."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; silent otherwise."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.error: str | None = None
        if self.path and not (self.path.startswith("/") or self.path.startswith("@")):
            self.error = f"NOTIFY_SOCKET={self.path!r} is not a socket path; notifications are off"
            self.path = ""
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def send(self, *lines: str) -> bool:
        if not self.path:
            return False
        address = "\0" + self.path[1:] if self.path.startswith("@") else self.path
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), address)
        except OSError as exc:
            self.error = f"cannot notify systemd at {self.path}: {exc.strerror or exc}"
            return False
        return True

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
