"""What a reaped child's exit means, decided by its kind in the record of children.

A worker's exit is classified and counted (deaths.py), feeds the crash-loop
backoff or ends a failed reload; a spare's feeds the spares' backoff; a
mold's gives up reforking if it was still being promoted; a pid the record
does not hold is the new master started by USR2, or an orphan handed to us
as subreaper or pid 1. Each is one method here; `reaped` picks it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from unicornish.host import log
from unicornish.master.children import MOLD, SPARE, WORKER, Children, WorkerProc
from unicornish.master.deaths import OOM, OOM_SUFFIX, Deaths
from unicornish.master.pool import Pool
from unicornish.master.readiness import Readiness
from unicornish.master.recycle import GiveUp
from unicornish.master.refork import Reforker
from unicornish.master.reload import Reloader
from unicornish.master.shutdown import Stop
from unicornish.master.spares import Spares
from unicornish.master.state import View
from unicornish.master.upgrade import Upgrade
from unicornish.metrics.appcollector import AppMetrics
from unicornish.metrics.families import Tallies
from unicornish.protocol import EXIT_BOOT_FAILED, describe_status

Exit = Callable[[WorkerProc, str, "int | None", "int | None"], None]


class Reaper:
    def __init__(
        self,
        log: logging.Logger,
        view: View,
        children: Children,
        deaths: Deaths,
        tallies: Tallies,
        app_metrics: AppMetrics,
        pool: Pool,
        spares: Spares,
        reforker: Reforker,
        reloader: Reloader,
        readiness: Readiness,
        give_up: GiveUp,
        upgrade: Upgrade,
        stop: Stop,
    ) -> None:
        self.log = log
        self.view = view
        self.children = children
        self.deaths = deaths
        self.tallies = tallies
        self.app_metrics = app_metrics
        self.pool = pool
        self.spares = spares
        self.reforker = reforker
        self.reloader = reloader
        self.readiness = readiness
        self.give_up = give_up
        self.upgrade = upgrade
        self.stop = stop
        self.by_kind: dict[str, Exit] = {
            WORKER: self.worker_exited,
            SPARE: self.spare_exited,
            MOLD: self.mold_exited,
        }

    def reaped(self, pid: int, status: int) -> None:
        text, code, signum = describe_status(status)
        w = self.children.pop(pid)
        if w is None:
            self.not_ours(pid, text, signum)
        else:
            self.by_kind[w.kind](w, text, code, signum)

    def worker_exited(self, w: WorkerProc, text: str, code: int | None, signum: int | None) -> None:
        cause = self.deaths.record(w, code, signum, time.monotonic())
        if cause == OOM:
            text += OOM_SUFFIX
        self.log.info(
            "reaped pid=%d %s status=%s",
            w.pid,
            w.label,
            text,
            extra=log.event("worker_reaped", pid=w.pid, nr=w.nr, status=text, cause=cause),
        )
        now = time.monotonic()
        was_ready = w.started_loop()
        if was_ready and w.ready_at is None:
            w.ready_at = now
        tasks = w.board.task_count()
        self.retire_pages(w)
        self.give_up.on_reaped(w, now)
        if code == 0 and w.max_tasks and tasks >= w.max_tasks and not w.stopping:
            self.log.info("%s pid=%d recycled after %d tasks (--max-tasks)", w.label, w.pid, tasks)
        view = self.view
        if code == EXIT_BOOT_FAILED and not view.stopping_workers:
            reason = f"{w.label} could not boot (exit {code}); see the log"
            if self.readiness.boot_failed(reason):
                # -D, not ready yet: leave nothing running; the launcher exits 1.
                self.stop(True, "-D start failed", 1, received=False)
                return
        if w.stopping or w.timed_out or view.stopping_workers:  # a drain still replaces workers
            return
        if not was_ready and view.rolling and w.generation == view.release.generation:
            self.reloader.abort(w, code, self.children.workers)
            return
        self.pool.record_exit(w, code, signum, now, tasks)

    def spare_exited(self, w: WorkerProc, text: str, code: int | None, signum: int | None) -> None:
        # Every SIGKILL is checked, so an OOM kill explains one death only.
        if self.deaths.out_of_memory(signum, w.killed):
            text += OOM_SUFFIX
        self.spares.reaped(w, text, code, signum)

    def mold_exited(self, w: WorkerProc, text: str, code: int | None, signum: int | None) -> None:
        self.reforker.reaped(w, text)
        self.retire_pages(w)

    def not_ours(self, pid: int, text: str, signum: int | None) -> None:
        if self.deaths.out_of_memory(signum, False):
            text += OOM_SUFFIX
        if pid == self.upgrade.pid:
            self.upgrade.exited(text, bool(self.view.stopping))
            return
        # An orphan handed to us as subreaper or pid 1.
        self.log.info(
            "reaped orphan pid=%d status=%s",
            pid,
            text,
            extra=log.event("orphan_reaped", pid=pid, status=text),
        )

    def retire_pages(self, w: WorkerProc) -> None:
        """Its tasks and app metrics live on in the totals; its pages go."""
        board = w.board
        self.tallies.worker_reaped(w.nr, board.task_count(), board.task_durations())
        board.close()
        if w.arena is not None:
            self.app_metrics.retire(w.arena, f"{w.label} pid={w.pid}", w.generation)
            w.arena = None
