"""Tell the bench that this worker is ready: one datagram, "ready PID MONOTONIC".

The bench binds a unix datagram socket and passes its path in
BENCH_READY_SOCK. time.monotonic() is CLOCK_MONOTONIC on Linux, a
system-wide clock, so the bench can subtract it from its own readings.
"""

import os
import socket
import time


def announce(kind="ready", *extra):
    now = time.monotonic()  # first: the moment of readiness, before any I/O
    path = os.environ.get("BENCH_READY_SOCK")
    if not path:
        return
    fields = [kind, str(os.getpid()), repr(now)] + [str(x) for x in extra]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(" ".join(fields).encode(), path)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
