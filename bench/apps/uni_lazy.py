"""unicornish app for the refork scenario: each call of worker_start is one task
of lazy.py (BENCH_LAZY: heap, stdlib or none).

A worker runs its first BENCH_LAZY_TASKS tasks back to back, as under a steady
load; then it waits for connections on the unix listener (one task each, so
the bench can drive more) instead of spinning on two shared cores. The wait
returns every second, so the master keeps seeing tasks complete.
"""

import lazy


def worker_start(worker):
    if lazy.active():
        lazy.task()
        return
    got = worker.accept(timeout=1.0)
    if got is not None:
        conn = got[0]
        with conn:
            lazy.task()
            conn.sendall(b"ok\n")
