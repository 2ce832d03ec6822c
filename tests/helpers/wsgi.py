"""--wsgi's test helpers: the Flask and Django apps under tests/wsgi_apps, raw
exchanges over a socket, and wrk with its failures counted."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import ROOT

# wrk, the load generator (make check installs it with the other system tools).
WRK = shutil.which("wrk")

WSGI_APPS = ROOT / "tests" / "wsgi_apps"


def wsgi_site(tmp: Path) -> Path:
    """A copy of tests/wsgi_apps (the Flask and Django apps) with their payload file,
    to start a master in: --wsgi imports from the current directory."""
    site = tmp / "site"
    shutil.copytree(WSGI_APPS, site, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "payload.bin").write_bytes(bytes(range(256)) * 4096)
    return site


def listening_port(run: Any, timeout: float = 10.0) -> int:
    """The port a master started with --listen 127.0.0.1:0 got."""
    log = run.wait_log(r"listening on 127\.0\.0\.1:\d+ ", 1, timeout)
    found = re.search(r"listening on 127\.0\.0\.1:(\d+) ", log)
    assert found, log
    return int(found.group(1))


def exchange(port: int, data: bytes, timeout: float = 5.0, until_close: bool = True) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                out += b"<RESET>"
                break
            if not chunk:
                break
            out += chunk
            if not until_close and b"\r\n\r\n" in out:
                break
        return out


def statuses(raw: bytes) -> list[int]:
    """The status codes of the responses in `raw`, in order (not 100 Continue)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw) if code != b"100"]


@dataclass
class LoadResult:
    requests: int
    errors: dict[str, int]
    non_2xx: int
    output: str

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + self.non_2xx


class Load:
    """wrk hammering a URL with keep-alive connections, in the background."""

    def __init__(self, port: int, seconds: float, connections: int = 16, path: str = "/") -> None:
        assert WRK, "wrk is needed (make's TOOLS_STAMP installs it)"
        self.proc = subprocess.Popen(
            [
                WRK,
                "-t2",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                f"http://127.0.0.1:{port}{path}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self, timeout: float = 60.0) -> LoadResult:
        out, _ = self.proc.communicate(timeout=timeout)
        found = re.search(r"(\d+) requests in", out)
        assert found, out
        errors: dict[str, int] = {}
        socket_errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        if socket_errors:
            kinds = ("connect", "read", "write", "timeout")
            errors = dict(zip(kinds, map(int, socket_errors.groups()), strict=True))
        non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return LoadResult(int(found.group(1)), errors, int(non.group(1)) if non else 0, out)
