"""Lazily built state, like a cache or ORM metadata: ~64 MiB of ordinary Python
objects (a dict of small dicts holding ints, strs, a float and a list), built
1 MiB per task over a worker's first 64 tasks (BENCH_LAZY_MB sets the total).

Nothing is built at import: this is the state `--preload` cannot share,
because the master never runs a task. Each warm task looks up a few records
(BENCH_LAZY_READS, uniformly spread) and reads two fields, so the state is
used, not merely kept: in CPython a read changes the reference counts of the
objects read, which writes to their pages and un-shares them after a fork.
"""

import os

# ~713 bytes per record on CPython 3.11 (measured as USS growth): 1 MiB a step.
_PER_STEP = (1 << 20) // 713
_STEPS = int(float(os.environ.get("BENCH_LAZY_MB", "64")))
_READS = int(os.environ.get("BENCH_LAZY_READS", "8"))

CACHE: dict[int, dict[str, object]] = {}
_built = 0
_cursor = 0


def complete() -> bool:
    return _built >= _STEPS


def step() -> None:
    """One task's share of the build: 1 MiB of records."""
    global _built
    start = _built * _PER_STEP
    for i in range(start, start + _PER_STEP):
        CACHE[i] = {
            "id": i,
            "name": f"user-{i}",
            "email": f"user{i}@example.com",
            "tags": ["staff", f"group-{i % 97}"],
            "score": i * 0.5,
            "parent": i // 2,
        }
    _built += 1


def read() -> float:
    """A warm task's use of the state: a few lookups, spread over all of it."""
    global _cursor
    n = len(CACHE)
    if not n:
        return 0.0
    total = 0.0
    for _ in range(_READS):
        # A fixed odd stride modulo n visits the records in a scattered order.
        _cursor = (_cursor + 7919 * 257) % n
        rec = CACHE[_cursor]
        total += len(rec["name"]) + rec["score"]  # type: ignore[arg-type, operator]
    return total
