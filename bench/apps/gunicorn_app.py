"""WSGI app for the gunicorn peer. With BENCH_HEAP=1 it builds heap.DATA at import."""

import os

if os.environ.get("BENCH_HEAP") == "1":
    import heap  # noqa: F401


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
