"""The task of the refork scenario, shared by the unicornish app (uni_lazy.py)
and the gunicorn app (one task per request; gunicorn_conf.py drives the first
BENCH_LAZY_TASKS of each worker from post_worker_init).

BENCH_LAZY picks the lazily built state: `heap` (lazy_heap.py, ~64 MiB of
objects), `stdlib` (lazy_stdlib.py, 144 modules) or `none` (an empty task: the
baseline that tells the state's cost from everything else a worker holds).
A task builds the next piece of the state until it is complete, then only
reads it.

Announcements (benchready.py), per process:
- `ready PID T` before the first task;
- `warm PID T TASKS BUILT` at the end of the first task that found the state
  complete, i.e. ran at full speed (a worker forked from a mold: its first
  task; a cold one: the first after its build); BUILT is how many of its own
  tasks built something (0: it inherited the state);
- `state PID T BYTES` right after, for a worker that built the state itself:
  its USS growth from before its first task, i.e. what the state costs in one
  process;
- `done PID T USS` after BENCH_LAZY_TASKS tasks.
"""

import os
from types import ModuleType

from benchready import announce

KIND = os.environ.get("BENCH_LAZY", "none")
ACTIVE = int(os.environ.get("BENCH_LAZY_TASKS", "200"))

_state: ModuleType | None = None
if KIND == "heap":
    import lazy_heap as _state
elif KIND == "stdlib":
    import lazy_stdlib as _state

# Per process: a worker forked from a mold inherits the mold's values of these,
# so they are reset whenever the pid is not the one that set them.
_pid = 0
_tasks = 0
_built = 0
_warm = False
_uss0 = 0


def uss() -> int:
    """Private_Clean + Private_Dirty of this process, in bytes."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def active() -> bool:
    """True until this process has run its BENCH_LAZY_TASKS tasks."""
    return _pid != os.getpid() or _tasks < ACTIVE


def task() -> None:
    global _pid, _tasks, _built, _warm, _uss0
    if _pid != os.getpid():
        announce("ready")
        _pid, _tasks, _built, _warm = os.getpid(), 0, 0, False
        _uss0 = uss()
    full_speed = _state is None or _state.complete()
    if not full_speed:
        _state.step()  # type: ignore[union-attr]
        _built += 1
    if _state is not None:
        _state.read()
    _tasks += 1
    if full_speed and not _warm:
        _warm = True
        announce("warm", _tasks, _built)
        if _built:
            announce("state", uss() - _uss0)
    if _tasks == ACTIVE:
        announce("done", uss())
