"""unicornish app for the preload-memory scenario: heap.DATA is built at
import (in the master with --preload). On its first task each worker runs a
full gc.collect(), as any long-running worker eventually does, then
announces itself and idles.

unicornish calls gc.freeze() by itself before forking a preloaded app; to
measure "without freeze", BENCH_GC_UNFREEZE=1 makes the worker undo it first
(gc.unfreeze() only relinks two list heads: it touches no object).
"""

import gc
import os

import heap
from benchready import announce

_announced = False


def worker_start(worker):
    global _announced
    if not _announced:
        _announced = True
        if os.environ.get("BENCH_GC_UNFREEZE") == "1":
            gc.unfreeze()
        gc.collect()
        announce("ready", len(heap.DATA), heap.HEAP_BYTES)
    got = worker.accept()
    if got is not None:
        got[0].close()
