"""~100 MB of ordinary Python objects, built at import (shared by the
unicornish and gunicorn preload apps). BENCH_HEAP_MB sets the size.

Dicts and lists are GC-tracked, so a full collection in a worker touches
every one of them: that is what un-shares copy-on-write pages, and what
gc.freeze() (BENCH_GC_FREEZE=1, called at the end of the import, i.e. in the
master before it forks) is meant to prevent.
"""

import gc
import os

from benchready import rss_bytes

_before = rss_bytes()
_n = int(float(os.environ.get("BENCH_HEAP_MB", "100")) * 1024 * 1024 / 410)
DATA = [{"id": i, "name": f"item-{i}", "tags": [i, -i]} for i in range(_n)]
HEAP_BYTES = rss_bytes() - _before
if os.environ.get("BENCH_GC_FREEZE") == "1":
    gc.freeze()
