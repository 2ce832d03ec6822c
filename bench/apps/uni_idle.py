"""unicornish app: an idle worker waiting for connections that never come.

Readiness is announced on the first call of worker_start, i.e. when the
worker is really inside its task loop.
"""

from benchready import announce

_announced = False


def worker_start(worker):
    global _announced
    if not _announced:
        _announced = True
        announce()
    got = worker.accept()
    if got is not None:
        got[0].close()
