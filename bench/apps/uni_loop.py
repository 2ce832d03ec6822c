"""unicornish app for the worker-loop scenario: an empty task.

The task only counts its calls (a global increment, and a clock read every
65536 calls); after BENCH_LOOP_SECONDS of calls it reports the rate once
("rate PID MONO TASKS_PER_S") and goes on. bench/run.py times the very same
function in a bare `for` loop for the comparison.
"""

import os
import time

from benchready import announce

_n = 0
_t0 = 0.0
_done = False
_window = float(os.environ.get("BENCH_LOOP_SECONDS", "2"))


def worker_start(worker):
    global _n, _t0, _done
    _n += 1
    if _n & 0xFFFF == 0 or _n == 1:
        if _n == 1:
            _t0 = time.monotonic()
            announce()
        elif not _done:
            dt = time.monotonic() - _t0
            if dt >= _window:
                _done = True
                announce("rate", (_n - 1) / dt)
