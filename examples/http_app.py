"""A small HTTP app on the inherited listener, standard library only.

    bin/unicornish --app examples/http_app.py --listen 127.0.0.1:8000 --workers 2
    curl http://127.0.0.1:8000/
    {"version": "1", "pid": 4242, "worker": 0, "master_pid": 4241}

Every answer names the worker that gave it and VERSION below, read from this
file when a worker loads it. Edit VERSION, then send HUP (new workers, same
master) or USR2 and then QUIT to the old master (a new master): the answers
change to the new version and no request fails.

One request per connection (HTTP/1.0, `Connection: close`): a worker that
was asked to stop finishes the request it has accepted, then exits.
"""

from __future__ import annotations

import json
import os
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

VERSION = "1"

# A client that sends nothing for this long loses its connection (and its worker back).
REQUEST_TIMEOUT = 10.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "unicornish-http-example"
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        worker: Any = self.server
        body = json.dumps(
            {
                "version": VERSION,
                "pid": os.getpid(),
                "worker": worker.nr,
                "master_pid": worker.master_pid,
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) + 1))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body + b"\n")

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass  # one line per request would drown the master's log


def worker_start(worker: Any) -> None:
    got = worker.accept()
    if got is None:  # asked to stop, or the master is gone
        return
    conn, addr = got
    try:
        # BaseHTTPRequestHandler reads the request, answers and flushes in __init__;
        # its `server` is only handed back to us, so the worker rides along there.
        Handler(conn, addr, worker)
        conn.shutdown(socket.SHUT_WR)
    except OSError as exc:  # the client went away: its problem, not the worker's
        worker.log.info("worker[%d] client %s: %s", worker.nr, addr, exc)
    finally:
        conn.close()
