"""unicornish app for scenario 10 (adaptive count): one job per connection.

The client sends the job's length in milliseconds as a line; the worker holds
for that long (a sleep: a task waiting on I/O, so that many can run on two
cores), answers `ok` and closes. Readiness is announced on the first call of
worker_start, as in uni_idle.py.
"""

import time

from benchready import announce

_announced = False


def worker_start(worker):
    global _announced
    if not _announced:
        _announced = True
        announce()
    got = worker.accept()
    if got is None:
        return
    conn, _address = got
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                return
            data += chunk
        time.sleep(int(data) / 1000.0)
        conn.sendall(b"ok\n")
