"""unicornish app for the preload-memory scenario: heap.DATA is built at
import (in the master with --preload). On its first task each worker runs a
full gc.collect(), as any long-running worker eventually does, then
announces itself and idles."""

import gc

from benchready import announce

import heap

_announced = False


def worker_start(worker):
    global _announced
    if not _announced:
        _announced = True
        gc.collect()
        announce("ready", len(heap.DATA), heap.HEAP_BYTES)
    got = worker.accept()
    if got is not None:
        got[0].close()
