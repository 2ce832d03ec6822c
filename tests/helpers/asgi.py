"""--asgi's test helpers: the Starlette app under tests/asgiapp, wrk, a plain GET."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .processes import ROOT, Run
from .wsgi import Load

APP_DIR = ROOT / "tests" / "asgiapp"


def copy_asgi_app(tmp_path: Path) -> Path:
    """A copy of the app, so a test can change it (HUP) or drop FAIL_STARTUP beside it."""
    target = tmp_path / "site"
    target.mkdir()
    shutil.copy(APP_DIR / "main.py", target / "main.py")
    return target


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def start_asgi(start: Any, app_dir: Path, port: int, *args: str, **kw: Any) -> Run:
    return start("--asgi", "main:app", "--listen", f"127.0.0.1:{port}", *args, cwd=app_dir, **kw)


def wrk(port: int, seconds: float, path: str = "/") -> subprocess.Popen[str]:
    """wrk with 16 keep-alive connections, in the background (the WSGI tests' Load)."""
    return Load(port, seconds, 16, path).proc


def wrk_result(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """wrk's output, once it has checked that no request failed."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    # wrk prints these two lines only when there is something to count.
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out
    requests = re.search(r"(\d+) requests in", out)
    assert requests and int(requests.group(1)) > 100, out
    return out
