"""The master's metrics from outside: over HTTP (--metrics), through `ctl
metrics`, or written to files by a config file's before_fork hook."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from .processes import run_cli, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(port: int, path: str, raw: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of one request; `raw` replaces the whole request."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw or f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, as {'name{labels}': value}."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


# The master is found up the stack (Master.run called us); gc.get_objects() would
# miss it under --preload, where gc.freeze() moves everything out of its sight.
SCRAPING_CONFIG = """
import os, sys
app = "app.py"
_scrapes = [0]

def _master():
    frame = sys._getframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if type(candidate).__name__ == "Master":
            return candidate
        frame = frame.f_back
    raise RuntimeError("no Master up the stack")

def before_fork(worker):
    text = _master().metrics_text()
    _scrapes[0] += 1
    path = os.path.join(os.path.dirname(__file__), f"scrape-{_scrapes[0]}.txt")
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.rename(path + ".tmp", path)
"""


def scrape(tmp: Path, n: int) -> dict[str, float]:
    """The n-th scrape SCRAPING_CONFIG wrote, as {'name{labels}': value}."""
    path = tmp / f"scrape-{n}.txt"
    wait_until(path.exists, 10, f"scrape {n}")
    return samples(path.read_text())


def ctl(path: Path | str, *args: str) -> tuple[int, dict]:
    """`unicornish ctl --control PATH ARGS...`: its exit code and its JSON reply."""
    result = run_cli("ctl", "--control", str(path), *args)
    reply = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, reply


def ctl_metrics(control: Path) -> dict[str, float]:
    """Every sample `ctl metrics` prints, as {'name{labels}': value}."""
    result = run_cli("ctl", "--control", str(control), "metrics")
    assert result.returncode == 0, result.stderr
    return samples(result.stdout)
