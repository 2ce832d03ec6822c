"""WSGI app for the gunicorn peer. With BENCH_HEAP=1 it builds heap.DATA at import.
With BENCH_LAZY set (the refork scenario), each request is one task of lazy.py."""

import os

if os.environ.get("BENCH_HEAP") == "1":
    import heap  # noqa: F401

_lazy_task = None
if os.environ.get("BENCH_LAZY"):
    import lazy

    _lazy_task = lazy.task


def application(environ, start_response):
    if _lazy_task is not None:
        _lazy_task()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
