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

import os
import signal
import time
from typing import TYPE_CHECKING

from unicornish.worker import encode_slot

if TYPE_CHECKING:
    from unicornish.master import Master, WorkerProc

SPARE_SLOT = -1  # the backoff key of spares


class Spares:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.procs: dict[int, WorkerProc] = {}  # pid -> record; extra["assign_fd"]
        master.child_closes.append(self.close_in_child)
        master.timers.append(self.next_deadline)

    @property
    def wanted(self) -> int:
        return int(getattr(self.master.settings, "spares", 0) or 0)

    def _current(self) -> list[WorkerProc]:
        return [
            p
            for p in self.procs.values()
            if p.generation == self.master.generation and not p.stopping
        ]

    # -- the master's loop --------------------------------------------------------

    def maintain(self, now: float) -> None:
        """Retire spares of an old generation; fork missing ones (with backoff)."""
        master = self.master
        for proc in list(self.procs.values()):
            if proc.generation != master.generation and not proc.stopping:
                self.retire(proc, now, master.settings.graceful_timeout)
        if master.stopping or master.wanted == 0:
            return
        missing = self.wanted - len(self._current())
        if missing <= 0 or master.backoff.not_before(SPARE_SLOT) > now:
            return
        if any(w.extra.get("from_spare") and w.ready_at is None for w in master.workers.values()):
            # A spare just took a slot: let it have the CPU until it is ready
            # (its ready report wakes us), then fork the next spare.
            return
        for _ in range(missing):
            self.spawn()

    def spawn(self) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        # The child closes every spare's write end (close_in_child) and this one.
        self._forking_write_fd = write_fd
        try:
            proc = self.master.spawn_worker(SPARE_SLOT, assign_fd=read_fd)
        finally:
            self._forking_write_fd = -1
            os.close(read_fd)
        if proc is None:
            os.close(write_fd)
            return
        proc.extra["assign_fd"] = write_fd
        self.procs[proc.pid] = proc

    def assign(self, nr: int) -> bool:
        """Give slot `nr` to a spare; False when none is there."""
        for proc in self._current():
            fd = proc.extra.get("assign_fd")
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
            proc.extra.pop("assign_fd")
            del self.procs[proc.pid]
            proc.nr = nr
            proc.extra["from_spare"] = True
            proc.spawned_at = time.monotonic()
            proc.spawned_wall = time.time()
            proc.max_tasks = self.master.worker_max_tasks()
            self.master.workers[proc.pid] = proc
            self.master.log.info("worker[%d] spawning.. (a spare takes the slot)", nr)
            self.master.log.info("worker[%d] spawned pid=%d", nr, proc.pid)
            return True
        return False

    def retire(self, proc: WorkerProc, now: float, wait: float) -> None:
        """EOF on its pipe makes a spare exit; SIGKILL if it has not after `wait`."""
        fd = proc.extra.pop("assign_fd", None)
        if fd is not None:
            os.close(fd)
        proc.stop_signal = "EOF"
        proc.kill_at = now + wait

    def stop_all(self, now: float, quick: bool) -> None:
        for proc in self.procs.values():
            if quick:
                self.master._signal(proc, signal.SIGTERM, group=True)
            self.retire(proc, now, min(5.0, self.master.settings.graceful_timeout))

    def kill_past_deadline(self, now: float) -> None:
        for proc in self.procs.values():
            if proc.kill_at is not None and not proc.killed and now >= proc.kill_at:
                self.master._signal(proc, signal.SIGKILL, group=True)
                proc.killed = True

    def next_deadline(self, now: float) -> float | None:
        deadlines = [p.kill_at for p in self.procs.values() if p.kill_at and not p.killed]
        if self.wanted and not self.master.stopping and len(self._current()) < self.wanted:
            deadlines.append(max(now, self.master.backoff.not_before(SPARE_SLOT)))
        return min(deadlines) if deadlines else None

    def reaped(self, pid: int, text: str, code: int | None, signum: int | None) -> bool:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return False
        self.master.log.info("reaped pid=%d spare status=%s", pid, text)
        fd = proc.extra.pop("assign_fd", None)
        if fd is not None:
            os.close(fd)
        proc.board.close()
        if not proc.stopping and not self.master.stopping:
            # A spare never gets ready as a worker: any death of its own is a crash.
            delay = self.master.backoff.record_exit(
                SPARE_SLOT, time.monotonic(), None, code, signum
            )
            if delay > 0:
                self.master.log.warning("spare died; forking the next one in %.2fs", delay)
        return True

    # -- in a forked child ----------------------------------------------------------

    _forking_write_fd = -1

    def close_in_child(self) -> None:
        fds = [p.extra.get("assign_fd") for p in self.procs.values()]
        fds.append(self._forking_write_fd)
        for fd in fds:
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close_all(self) -> None:
        for proc in self.procs.values():
            fd = proc.extra.pop("assign_fd", None)
            if fd is not None:
                os.close(fd)
