"""unicornish app for the worker-loop scenario: an empty task.

The task only counts its calls (with BENCH_LOOP_COUNTER set, it also increments
one app-metrics counter) (a global increment, and a clock read every
65536 calls). Every BENCH_LOOP_WINDOW seconds it reports the rate of the
last window ("rate PID MONO TASKS_PER_S") and goes on. bench/run.py times
the very same function in a bare `for` loop for the comparison.
"""

import os
import time

from benchready import announce

_n = 0
_n_last = 0
_t_last = 0.0
_window = float(os.environ.get("BENCH_LOOP_WINDOW", "0.5"))

if os.environ.get("BENCH_LOOP_COUNTER"):
    # One app-metrics counter increment per task: what a store in shared memory costs.
    from unicornish.metrics import appmetrics

    _inc = appmetrics.counter("bench_tasks", "Tasks done").inc
else:

    def _inc() -> None:
        pass


def worker_start(worker):
    global _n, _n_last, _t_last
    _n += 1
    _inc()
    if _n & 0xFFFF == 0:
        now = time.monotonic()
        if now - _t_last >= _window:
            if _n_last:
                announce("rate", (_n - _n_last) / (now - _t_last))
            _n_last, _t_last = _n, now
    elif _n == 1:
        announce()
        _n_last, _t_last = 1, time.monotonic()
