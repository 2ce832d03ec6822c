"""--spares N: pre-forked, booted standby processes that take over a dead worker's slot.

A respawn through fork() pays for the fork and for the new child's start-up
(mostly copy-on-write page faults as CPython touches its heap): a few
milliseconds. A spare has paid that in advance: it has its signal handlers,
its title and (without --preload) the app loaded, and blocks on a pipe. When a
slot needs a worker, the master writes the slot number into that pipe; the
spare becomes `worker[n]`, runs `after_fork` and starts its loop. Then the
master forks a new spare, off the critical path.

Spares are not workers: they are not counted, not timed, not in `status`, and
show as `spare` in `ps -o comm=`. Spares of an older generation (before a HUP)
are retired by closing their pipe. Off by default: a spare is one more process
(and, without --preload, one more copy of the app's private memory).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time

from unicornish.host import log
from unicornish.master.backoff import CrashBackoff
from unicornish.master.children import SPARE, WORKER, Children, Stopper, WorkerProc
from unicornish.master.pool import jittered_max_tasks
from unicornish.master.spawner import Release, Spawner
from unicornish.master.state import View
from unicornish.protocol import encode_slot

SPARE_SLOT = -1  # the backoff key of spares


class Spares:
    def __init__(
        self,
        spawner: Spawner,
        stopper: Stopper,
        backoff: CrashBackoff,
        children: Children,
        log: logging.Logger,
        view: View,
    ) -> None:
        self.spawner = spawner
        self.stopper = stopper
        self.backoff = backoff
        self.children = children
        self.log = log
        self.view = view
        self.rng = random.Random()

    def _current(self, generation: int) -> list[WorkerProc]:
        return [p for p in self.children.spares.live() if p.generation == generation]

    # -- the duty -------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Retire spares of an old generation; fork missing ones (with backoff)."""
        release = self.view.release
        for proc in self.children.spares.live():
            if proc.generation != release.generation:
                self.retire(proc, now, release.settings.graceful_timeout)
        wanted = release.settings.spares
        if not wanted or self.view.stopping_workers or self.view.wanted == 0:
            return None
        missing = wanted - len(self._current(release.generation))
        if missing <= 0:
            return None
        not_before = self.backoff.not_before(SPARE_SLOT)
        if not_before > now:
            return not_before
        if any(w.from_spare and not w.stopping for w in self.children.workers.booting.values()):
            # A spare just took a slot: let it have the CPU until it is ready (its
            # ready report, or the pool's boot check, wakes us); then fork the next.
            return None
        for _ in range(missing):
            if not self.spawn(release):
                return self.backoff.not_before(SPARE_SLOT)
        return None

    def spawn(self, release: Release) -> bool:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        limit = jittered_max_tasks(release.settings.max_tasks, self.rng)
        try:
            proc = self.spawner.spawn(-1, release, limit, assign_fd=read_fd, close_fd=write_fd)
        finally:
            os.close(read_fd)
        if proc is None:
            os.close(write_fd)
            self.backoff.record_exit(SPARE_SLOT, time.monotonic(), None, 1, None)
            return False
        proc.assign_fd = write_fd
        proc.kind = SPARE  # not in the record yet
        self.children.add(proc)
        return True

    def assign(self, nr: int, release: Release) -> WorkerProc | None:
        """Give slot `nr` to a spare of this release, which becomes the worker of
        that slot in the record of children; None when none is there."""
        for proc in self._current(release.generation):
            fd = proc.assign_fd
            if fd is None:
                continue
            try:
                os.write(fd, encode_slot(nr))
            except OSError:
                continue  # died meanwhile: reaped soon
            os.close(fd)
            # The woken spare is usually queued on this CPU: let it run now rather
            # than at the next scheduler tick (measured: p50 7.4 -> 3.8 ms, and no
            # more two-humped distribution; a fork respawn does not gain from it).
            os.sched_yield()
            proc.assign_fd = None
            proc.from_spare = True
            proc.spawned_at = time.monotonic()
            proc.spawned_wall = time.time()
            self.children.change_kind(proc, WORKER, nr)
            # proc.max_tasks stays the limit the spare was forked with: it counts by it.
            self.log.info(
                "worker[%d] spawning.. (a spare takes the slot)",
                nr,
                extra=log.event("worker_spawning", nr=nr),
            )
            self.log.info(
                "worker[%d] spawned pid=%d",
                nr,
                proc.pid,
                extra=log.event("worker_spawned", pid=proc.pid, nr=nr),
            )
            return proc
        return None

    def retire(self, proc: WorkerProc, now: float, wait: float) -> None:
        """EOF on its pipe makes a spare exit; SIGKILL if it has not after `wait`."""
        if proc.assign_fd is not None:
            os.close(proc.assign_fd)
            proc.assign_fd = None
        self.stopper.mark_stopping(proc, "EOF")
        self.stopper.kill_after(proc, now + wait)

    def stop_all(self, now: float, quick: bool, wait: float) -> None:
        """The master stops: the same signals and waits as its workers get."""
        for proc in self.children.spares:
            if quick:
                self.stopper.signal(proc, signal.SIGTERM, group=True)
            self.retire(proc, now, wait)

    def reaped(self, proc: WorkerProc, text: str, code: int | None, signum: int | None) -> None:
        """A spare exited (it is out of the record already)."""
        pid = proc.pid
        self.log.info(
            "reaped pid=%d spare status=%s",
            pid,
            text,
            extra=log.event("spare_reaped", pid=pid, status=text),
        )
        if proc.assign_fd is not None:
            os.close(proc.assign_fd)
            proc.assign_fd = None
        proc.board.close()
        if proc.arena is not None:
            # A spare has not served: what it counted (at import) is not kept.
            proc.arena.close()
            proc.arena = None
        if not proc.stopping and not self.view.stopping_workers:
            # A spare never gets ready as a worker: any death of its own is a crash.
            delay = self.backoff.record_exit(SPARE_SLOT, time.monotonic(), None, code, signum)
            if delay > 0:
                self.log.warning("spare died; forking the next one in %.2fs", delay)

    # -- in a forked child ----------------------------------------------------------

    def close_in_child(self) -> None:
        for proc in self.children.spares:
            if proc.assign_fd is not None:
                try:
                    os.close(proc.assign_fd)
                except OSError:
                    pass
