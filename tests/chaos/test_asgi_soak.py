"""--asgi under a long wrk load (make soak only): HUP, TTIN and TTOU in random
order, --max-tasks recycling all along, and a WebSocket opened before each
HUP; no failed request, and every WebSocket that ends is closed with 1001 by
a retiring worker, never dropped."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
ws_client = pytest.importorskip("websockets.sync.client")
from helpers import WRK, copy_asgi_app, free_port, start_asgi, wrk, wrk_result  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402


@pytest.mark.soak_only
@pytest.mark.skipif(WRK is None, reason="needs wrk")
def test_asgi_soak(start: Any, tmp_path: Path, soak_seconds: float) -> None:
    app_dir = copy_asgi_app(tmp_path)
    port = free_port()
    run = start_asgi(
        start, app_dir, port, "--workers", "2", "--max-tasks", "20000", "--graceful-timeout", "4"
    )
    run.wait_ready(2, timeout=30)
    load = wrk(port, int(soak_seconds))
    closes: list[int | None] = []
    rng = random.Random(22)
    end = time.monotonic() + soak_seconds - 5
    hups = 0
    while time.monotonic() < end:
        action = rng.choice(("hup", "ttin", "ttou"))
        if action == "hup":
            threading.Thread(target=_hold_websocket, args=(port, closes), daemon=True).start()
            hups += 1
            run.signal(signal.SIGHUP)
            run.wait_log(r"reload done", hups, timeout=30)
        elif action == "ttin" and len(run.worker_pids()) < 4:
            run.signal(signal.SIGTTIN)
        elif action == "ttou" and len(run.worker_pids()) > 1:
            run.signal(signal.SIGTTOU)
        time.sleep(rng.uniform(0.5, 2.0))
    wrk_result(load, timeout=soak_seconds + 60)
    assert closes and set(closes) == {1001}, closes
    assert "Traceback" not in run.log()


def _hold_websocket(port: int, closes: list[int | None]) -> None:
    try:
        with ws_client.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            while True:
                ws.send("x")
                ws.recv(timeout=30)
                time.sleep(0.2)
    except ConnectionClosed as exc:
        closes.append(exc.rcvd.code if exc.rcvd is not None else None)
    except OSError:
        closes.append(None)
