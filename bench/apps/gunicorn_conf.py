"""gunicorn config for the bench: everything from BENCH_* variables, the rest default.

post_worker_init runs in the worker once the app is loaded, right before
it starts accepting: that is the moment we announce readiness.
"""

import gc
import os

bind = "unix:" + os.environ["BENCH_LISTEN"]
workers = int(os.environ.get("BENCH_WORKERS", "4"))
preload_app = os.environ.get("BENCH_PRELOAD") == "1"
if os.environ.get("BENCH_TIMEOUT"):
    timeout = int(os.environ["BENCH_TIMEOUT"])
# gunicorn >= 24 opens a control socket, by default one per user: give each run its own.
control_socket = os.environ["BENCH_CTL"]
pidfile = None
errorlog = "-"
loglevel = "info"


def _lazy_requests(worker):
    """The refork scenario: the worker's first BENCH_LAZY_TASKS requests, run here
    through the loaded WSGI app, so that every worker gets exactly as many as a
    unicornish worker runs tasks (requests over the socket would go to whichever
    worker the kernel wakes)."""
    import lazy

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}
    while lazy.active():
        worker.wsgi(environ, lambda status, headers, exc_info=None: None)


def post_worker_init(worker):
    from benchready import announce

    if os.environ.get("BENCH_LAZY"):
        _lazy_requests(worker)  # lazy.py announces for itself
    elif os.environ.get("BENCH_HEAP") == "1":
        import heap

        gc.collect()
        announce("ready", len(heap.DATA), heap.HEAP_BYTES)
    else:
        announce()
