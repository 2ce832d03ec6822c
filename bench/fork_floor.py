#!/usr/bin/env python3
"""The floor of a CPython respawn: fork() cost against what the forking process imported.

    bench/.venv/bin/python bench/fork_floor.py [MODULES ...]

For each set of modules (default: nothing, logging, psutil, unicornish.worker.process,
unicornish.master.master + cli), a fresh interpreter imports them, then forks 200
children that only report CLOCK_MONOTONIC and _exit(). It prints the RSS of
the forking process, how long fork() takes to return in the parent (page
tables are copied in proportion to what is mapped), and how long until the
child runs its first Python statement (plus the interpreter's at-fork work:
lock re-initialisation, threading, logging and other os.register_at_fork
callbacks). Every module a master imports makes each of its forks slower.
"""

from __future__ import annotations

import importlib
import os
import statistics
import subprocess
import sys
import time

DEFAULT = [
    "",
    "logging",
    "psutil",
    "unicornish.worker.process",
    "unicornish.master.master,unicornish.cli",
]


def measure(mods: list[str], n: int = 200) -> str:
    for m in mods:
        importlib.import_module(m)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    r, w = os.pipe()
    child, parent = [], []
    for _ in range(n):
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.write(w, repr(time.monotonic()).encode().ljust(32))
            os._exit(0)
        t1 = time.monotonic()
        t = float(os.read(r, 32))
        os.waitpid(pid, 0)
        parent.append(t1 - t0)
        child.append(t - t0)
        time.sleep(0.005)
    return (
        f"{','.join(mods) or '(nothing)':<36} rss {rss:5.1f} MiB   fork() returns in the parent"
        f" p50 {statistics.median(parent) * 1e3:.3f} ms   child runs Python"
        f" p50 {statistics.median(child) * 1e3:.3f} ms"
    )


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(measure([m for m in sys.argv[2].split(",") if m]))
        return 0
    for spec in sys.argv[1:] or DEFAULT:
        subprocess.run([sys.executable, __file__, "--one", spec], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
