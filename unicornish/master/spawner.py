"""Forking a worker: the master's side of the fork, and the child's first steps.

A `Release` is what the workers of one generation run: the settings, the
app (preloaded, or None when each worker loads it), the user they run as.
HUP makes a new one; a failed reload goes back to the previous one.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unicornish.app import App, CompiledApp, refresh_compiled
from unicornish.config import Settings
from unicornish.host import linux, log, privileges
from unicornish.host.privileges import Identity
from unicornish.master.children import WorkerProc
from unicornish.master.eventloop import EventLoop
from unicornish.master.moldlink import MoldError, MoldLink
from unicornish.metrics import appmetrics
from unicornish.protocol import EXIT_BOOT_FAILED, HANDLED_SIGNALS
from unicornish.scoreboard import SIZE as BOARD_SIZE
from unicornish.scoreboard import Scoreboard
from unicornish.worker.mold import run as run_worker
from unicornish.worker.mold import run_in_child
from unicornish.worker.process import Worker


@dataclass
class Release:
    settings: Settings
    app: App | None  # set only with --preload
    identity: Identity | None
    app_name: str
    generation: int = 0
    # Without --preload: the app file compiled in the master, inherited by each
    # new worker through the fork instead of compiled again in every child.
    compiled: CompiledApp | None = None
    # Set when this generation's workers fork from a mold (--refork-after);
    # which of the --refork-after counts they use (past the list: none).
    mold: MoldLink | None = None
    refork_index: int = 0

    @property
    def refork_at(self) -> int:
        """After this many tasks a worker of this release says it is warm (0: never)."""
        steps = self.settings.refork_after
        return steps[self.refork_index] if self.refork_index < len(steps) else 0

    def fresh_compiled(self) -> CompiledApp | None:
        """The compiled app for the next fork: compiled anew if the file changed
        since (a new worker runs the file as it is on disk now, HUP or not)."""
        if self.app is not None:
            return None
        self.compiled = refresh_compiled(self.settings.app_spec, self.compiled)
        return self.compiled

    def hooks(self, name: str) -> list[Callable[..., Any]]:
        """The config file's hook runs first, then the app's."""
        found = []
        config_hook = self.settings.hooks.get(name)
        if config_hook is not None:
            found.append(config_hook)
        if self.app is not None and name in self.app.hooks:
            found.append(self.app.hooks[name])
        return found


class Spawner:
    def __init__(
        self,
        loop: EventLoop,
        log: logging.Logger,
        master_pid: int,
        master_create_time: float,
        listeners: list[socket.socket],
        report_fd: int,
        mold_address: str,
    ) -> None:
        self.loop = loop
        self.log = log
        self.master_pid = master_pid
        self.master_create_time = master_create_time
        self.listeners = listeners
        self.report_fd = report_fd
        self.mold_address = mold_address
        # Told when a mold could not fork: it is given up (and stopped).
        self.mold_failed: Callable[[MoldLink], None] = lambda link: None

    def spawn(
        self,
        nr: int,
        release: Release,
        max_tasks: int | None,
        assign_fd: int | None = None,
        close_fd: int | None = None,
    ) -> WorkerProc | None:
        """Fork a worker for slot `nr`, or a spare (nr -1) that waits on `assign_fd`
        (`close_fd`, the other end of its pipe, is closed in the child). None when
        the fork failed (logged): the caller backs off."""
        label = worker_label(nr)
        kind = "worker" if nr >= 0 else "spare"
        fields = {"nr": nr} if nr >= 0 else {}
        self.log.info("%s spawning..", label, extra=log.event(f"{kind}_spawning", **fields))
        if release.mold is not None and release.mold.usable:
            from_mold = self.spawn_from_mold(release.mold, nr, label, release, max_tasks, assign_fd)
            if from_mold is not None:
                return from_mold
        record = self.new_record(nr, label, release, max_tasks)
        if record is None:
            return None
        arena = record.arena
        assert arena is not None
        worker = self.before_fork(record, release)
        compiled = release.fresh_compiled()
        log.flush_stdio()
        # Everything the master holds goes into the frozen generation for the
        # fork: the child's collector then never walks it (with thousands of
        # workers, the master's records of them), so it takes no copy-on-write
        # fault for them. With --preload it stays frozen here too, to keep the
        # app's pages shared; without, the master thaws at once (two list
        # splices: no object is touched) and collects its own garbage as before.
        gc.freeze()
        # Signals wait (blocked) until the child has its own handlers: a signal
        # caught in between would go to our wake-up pipe, as if sent to us.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if release.app is None:
                gc.unfreeze()
            record.board.close()
            arena.close()
            self.log.error("%s fork failed: %s; retrying", record.label, exc.strerror or exc)
            return None
        if pid == 0:
            run_in_child(  # never returns
                lambda: self._worker_life(
                    worker, release, compiled, mask, assign_fd, close_fd, arena
                ),
                self.log,
                lambda: worker_label(worker.nr),
            )
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if release.app is None:
            gc.unfreeze()
        try:
            os.setpgid(pid, pid)  # also done by the child; whoever runs first wins the race
        except OSError:
            pass
        return self.spawned(record, pid)

    def spawn_from_mold(
        self,
        mold: MoldLink,
        nr: int,
        label: str,
        release: Release,
        max_tasks: int | None,
        assign_fd: int | None,
    ) -> WorkerProc | None:
        """A worker forked by the mold; None when it could not (logged): the
        caller forks from the master instead."""
        fds: list[int] = []
        try:
            fds.append(linux.shared_memory("unicornish-board", BOARD_SIZE))
            fds.append(linux.shared_memory("unicornish-arena", appmetrics.ARENA_SIZE))
            record = self.new_record(nr, label, release, max_tasks, fds)
            if record is None:
                return None
            assert record.arena is not None
            self.before_fork(record, release)
            extra = [assign_fd] if assign_fd is not None else []
            try:
                pid = mold.fork(nr, max_tasks, release.refork_at, fds + extra)
            except MoldError as exc:
                record.board.close()
                record.arena.close()
                self.log.error(
                    "mold pid=%d cannot fork %s: %s; forking from the master", mold.pid, label, exc
                )
                self.mold_failed(mold)
                return None
        except OSError as exc:
            self.log.error("%s cannot spawn from the mold: %s", label, exc.strerror or exc)
            return None
        finally:
            for fd in fds:
                os.close(fd)
        return self.spawned(record, pid, f" (from mold pid={mold.pid})")

    def spawned(self, record: WorkerProc, pid: int, how: str = "") -> WorkerProc:
        """The child runs: no later child maps its pages; say so."""
        record.board.keep_from_children()
        if record.arena is not None:
            record.arena.keep_from_children()
        record.pid = pid
        fields = {"nr": record.nr} if record.nr >= 0 else {}
        kind = "worker" if record.nr >= 0 else "spare"
        self.log.info(
            "%s spawned pid=%d%s",
            record.label,
            pid,
            how,
            extra=log.event(f"{kind}_spawned", pid=pid, **fields),
        )
        return record

    def new_record(
        self,
        nr: int,
        label: str,
        release: Release,
        max_tasks: int | None,
        fds: tuple[int, int] | list[int] = (-1, -1),
    ) -> WorkerProc | None:
        """The master's record of the child to fork, with its shared pages (its
        scoreboard and its metrics arena, on `fds` when given: memfds for a mold
        to pass on); None when memory ran out (logged)."""
        try:
            board = Scoreboard(fds[0])
        except (OSError, MemoryError) as exc:  # out of memory or address space
            why = getattr(exc, "strerror", None) or type(exc).__name__
            self.log.error("%s cannot spawn: scoreboard: %s; retrying", label, why)
            return None
        try:
            arena = appmetrics.Arena(fds[1])
        except (OSError, MemoryError) as exc:
            board.close()
            why = getattr(exc, "strerror", None) or type(exc).__name__
            self.log.error("%s cannot spawn: metrics arena: %s; retrying", label, why)
            return None
        return WorkerProc(
            nr,
            pid=0,
            generation=release.generation,
            board=board,
            spawned_at=time.monotonic(),
            spawned_wall=time.time(),
            max_tasks=max_tasks,
            arena=arena,
        )

    def before_fork(self, record: WorkerProc, release: Release) -> Worker:
        """The worker object the child will run, shown to before_fork hooks first."""
        worker = Worker(
            record.nr,
            self.master_pid,
            self.master_create_time,
            self.listeners,
            record.board,
            release.app_name,
            record.max_tasks,
            release.refork_at,
            release.settings.kind,
            release.settings,
        )
        for hook in release.hooks("before_fork"):
            try:
                hook(worker)
            except BaseException:  # noqa: BLE001 - not even sys.exit() in the hook kills the master
                self.log.exception("%s before_fork failed", record.label)
        return worker

    def _worker_life(
        self,
        worker: Worker,
        release: Release,
        compiled: CompiledApp | None,
        mask: set[int | signal.Signals],
        assign_fd: int | None,
        close_fd: int | None,
        arena: appmetrics.Arena,
    ) -> int:
        """In the child: drop the master's machinery, run the worker; its exit code."""
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        self.loop.forget_in_child()
        # Before the app is loaded: its declarations go straight to our arena
        # (those a --preload master made are replayed into it).
        appmetrics.REGISTRY.bind(arena)
        if close_fd is not None:
            os.close(close_fd)
        if release.identity is not None:
            # Before the parent-death signal: changing uid/gid clears it.
            try:
                privileges.drop(release.identity)
            except OSError as exc:
                self.log.error(
                    "%s %s", worker_label(worker.nr), privileges.drop_error(release.identity, exc)
                )
                return EXIT_BOOT_FAILED
        linux.set_parent_death_signal(signal.SIGQUIT)
        worker.install_signals(release.settings.log_file)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.pid = os.getpid()
        settings = release.settings
        return run_worker(
            worker,
            release.app,
            settings.app_spec,
            settings.hooks,
            self.report_fd,
            assign_fd,
            compiled,
            settings.log_file,
            self.mold_address,
        )


def worker_label(nr: int) -> str:
    return f"worker[{nr}]" if nr >= 0 else "spare"
