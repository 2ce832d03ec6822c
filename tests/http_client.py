"""A real HTTP client for examples/http_app.py: single requests, and a hammer
that keeps several threads requesting while a test upgrades the server."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import EXAMPLES, wait_until

HTTP_APP = EXAMPLES / "http_app.py"


def write_http_app(path: Path, version: str) -> Path:
    """A copy of the example with VERSION set; replaced atomically (rename), so a
    worker loading it never reads half a file."""
    source = HTTP_APP.read_text()
    new, count = re.subn(r'^VERSION = ".*"$', f'VERSION = "{version}"', source, flags=re.M)
    assert count == 1, "examples/http_app.py must set VERSION on one line"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
    return path


def copy_http_app(path: Path) -> Path:
    shutil.copyfile(HTTP_APP, path)
    return path


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def get(target: str, path: str = "/", timeout: float = 10.0) -> dict[str, Any]:
    """GET from `host:port`, `[v6]:port` or `unix:/path`; the app's JSON answer."""
    conn: http.client.HTTPConnection
    if target.startswith("unix:"):
        conn = UnixHTTPConnection(target[5:], timeout=timeout)
    else:
        host, _, port = target.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {body!r}")
        result: dict[str, Any] = json.loads(body)
        return result
    finally:
        conn.close()


def listen_addresses(log: str) -> list[str]:
    """What the master said it listens on (`listening on ADDR fd=N`), in order."""
    return re.findall(r"listening on (\S+) fd=\d+", log)


def tcp_target(log: str) -> str:
    for address in listen_addresses(log):
        if not address.startswith("unix:"):
            return address
    raise AssertionError(f"no TCP listener in log:\n{log[-2000:]}")


@dataclass
class Answer:
    started: float
    version: str
    pid: int
    master_pid: int


@dataclass
class Hammer:
    """Threads that request `target` back to back until stop(); every failure is kept."""

    target: str
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                data = get(self.target)
                answer = Answer(started, data["version"], data["pid"], data["master_pid"])
            except Exception as exc:  # noqa: BLE001 - every failure is the test's business
                with self._lock:
                    self.failures.append(f"{time.monotonic():.3f} {exc!r}")
                continue
            with self._lock:
                self.answers.append(answer)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_answers(self, more: int = 20, timeout: float = 10.0) -> None:
        """Wait until `more` further requests got answers."""
        goal = self.count() + more
        wait_until(lambda: self.count() >= goal, timeout, f"{more} more answers ({self.failures})")

    def wait_version(self, version: str, timeout: float = 15.0) -> None:
        wait_until(
            lambda: any(a.version == version for a in self.snapshot()),
            timeout,
            f"an answer from version {version} (failures: {self.failures[:5]})",
        )

    def versions_since(self, moment: float) -> set[str]:
        return {a.version for a in self.snapshot() if a.started >= moment}

    def masters_since(self, moment: float) -> set[int]:
        return {a.master_pid for a in self.snapshot() if a.started >= moment}
