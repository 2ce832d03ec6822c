"""Why each worker died, counted by cause; and which SIGKILLs were the OOM killer's.

Every reaped worker gets exactly one cause, the first that applies:

    timeout     killed by the master after its task ran past --timeout
    oom         SIGKILL from nobody in the master while the memory cgroup's
                OOM-kill count went up: the kernel's OOM killer
    max_memory  recycled by the master for --max-memory
    max_tasks   left by itself after --max-tasks
    crash       a crash signal (SIGSEGV, SIGABRT...), or a death the master did
                not ask for before the worker was ready or within STABLE_AFTER
                of it: what the crash-loop backoff counts
    signal      any other signal (a kill from outside, a graceful-timeout SIGKILL)
    exit        any other exit (asked to stop, sys.exit() later on...)

The OOM test: the kernel counts OOM kills per memory cgroup (v2
memory.events, v1 memory.oom_control: `oom_kill N`), and increments that
count when it sends the SIGKILL, before the victim can even exit. The count
is read at start and at each SIGKILL reap; a SIGKILL the master did not send
(no --timeout or graceful-timeout kill of ours) is the OOM killer's when the
count went up since the last reading, each increase explaining one death.
An OOM kill of another process of the same group (not ours) is taken for
a worker's if an outside `kill -9` of a worker comes before the next reading.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

from unicornish.host import cgroups
from unicornish.master.backoff import CRASH_SIGNALS, STABLE_AFTER
from unicornish.master.children import WorkerProc
from unicornish.metrics.exposition import COUNTER, Family

TIMEOUT = "timeout"
OOM = "oom"
MAX_MEMORY = "max_memory"
MAX_TASKS = "max_tasks"
CRASH = "crash"
SIGNAL = "signal"
EXIT = "exit"
CAUSES = (EXIT, SIGNAL, TIMEOUT, MAX_TASKS, MAX_MEMORY, CRASH, OOM)

# What the `reaped ...` line of an OOM-killed worker ends with.
OOM_SUFFIX = " (out of memory)"

OomReader = Callable[[], "int | None"]


def cgroup_oom_reader(read: cgroups.Reader | None = None) -> OomReader:
    """Reads our memory cgroup's OOM-kill count (None where nothing counts them).
    The cgroup is found once: a master does not move between groups."""
    read = read or cgroups.FileReader()
    groups = cgroups.current(read)
    return lambda: cgroups.oom_kills(groups, read)


def classify(
    w: WorkerProc, code: int | None, signum: int | None, tasks: int, now: float, oom: bool
) -> str:
    """The one cause of a worker's death (pure: unit-tested on its own)."""
    if w.timed_out:
        return TIMEOUT
    if oom:
        return OOM
    if w.recycled == "max-memory":
        return MAX_MEMORY
    if code == 0 and w.max_tasks and tasks >= w.max_tasks and not w.stopping:
        return MAX_TASKS
    if signum in CRASH_SIGNALS:
        return CRASH
    if not w.stopping:
        ready_at = w.ready_at
        if ready_at is None and w.started_loop():
            ready_at = now  # ready, but its report was not read yet
        # As the backoff counts it: before ready, or a death of its own soon after.
        if ready_at is None or (signum is None and now - ready_at < STABLE_AFTER):
            return CRASH
    return SIGNAL if signum is not None else EXIT


class Deaths:
    """Counts worker deaths by cause; tells OOM kills from other SIGKILLs."""

    def __init__(self, oom_reader: OomReader | None = None) -> None:
        self.read_oom = oom_reader or cgroup_oom_reader()
        self.counts = dict.fromkeys(CAUSES, 0)
        self.last_oom = self._read()
        self.unexplained = 0  # OOM kills counted but not yet matched to a death

    def _read(self) -> int | None:
        try:
            return self.read_oom()
        except (OSError, ValueError):
            return None

    def out_of_memory(self, signum: int | None, killed_by_us: bool) -> bool:
        """Was this SIGKILL the OOM killer's? Call for every child reaped by SIGKILL
        (workers, spares, others), so each OOM kill explains one death only."""
        if signum != signal.SIGKILL:
            return False
        now_count = self._read()
        if now_count is not None and self.last_oom is not None and now_count > self.last_oom:
            self.unexplained += now_count - self.last_oom
        if now_count is not None:
            self.last_oom = now_count
        if killed_by_us or not self.unexplained:
            return False
        self.unexplained -= 1
        return True

    def record(self, w: WorkerProc, code: int | None, signum: int | None, now: float) -> str:
        """Classify and count a reaped worker (its scoreboard still open)."""
        oom = self.out_of_memory(signum, w.killed)
        cause = classify(w, code, signum, w.board.task_count(), now, oom)
        self.counts[cause] += 1
        return cause

    def own_families(self) -> Iterator[Family]:
        family = Family("unicornish_worker_exits", COUNTER, "Workers reaped, by cause of death")
        for cause in CAUSES:
            family.add(self.counts[cause], _CAUSE, (cause,))
        yield family


_CAUSE = ("cause",)
