"""systemd's end of NOTIFY_SOCKET, played by a test."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from pathlib import Path

from .processes import wait_until

_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class NotifyListener:
    """What systemd's end of NOTIFY_SOCKET sees: each datagram with its sender's pid
    (SCM_CREDENTIALS). Descriptors sent along (BARRIER=1) are closed, or held until
    release() while hold() is on, to stand for a systemd that has not read them yet."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[int, list[str]]] = []
        self._held: list[int] = []
        self._holding = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(16 * 4)
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(65536, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid, fds = 0, []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDS.unpack(payload[: _CREDS.size])[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) // 4 * 4]))
            with self._lock:
                self.messages.append((pid, data.decode().split("\n")))
                if self._holding:
                    self._held.extend(fds)
                    fds = []
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.release()

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
        for fd in held:
            os.close(fd)

    def snapshot(self) -> list[tuple[int, list[str]]]:
        with self._lock:
            return list(self.messages)

    def find(self, pid: int, line: str, after: int = -1) -> int | None:
        for index, (sender, lines) in enumerate(self.snapshot()):
            if index > after and sender == pid and line in lines:
                return index
        return None

    def wait(self, pid: int, line: str, after: int = -1, timeout: float = 10.0) -> int:
        wait_until(
            lambda: self.find(pid, line, after) is not None,
            timeout,
            f"{line!r} from pid {pid} after message {after}; got {self.snapshot()[-12:]}",
        )
        index = self.find(pid, line, after)
        assert index is not None
        return index

    def message(self, index: int) -> list[str]:
        return self.snapshot()[index][1]

    def lines_from(self, pid: int, after: int = -1) -> list[str]:
        return [
            line
            for index, (sender, lines) in enumerate(self.snapshot())
            if index > after and sender == pid
            for line in lines
        ]
