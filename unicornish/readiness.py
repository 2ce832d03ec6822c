"""Telling the world the master is ready: systemd's READY=1 and STATUS=, -D's launcher.

The first time every wanted worker is ready (and no reload is under way) the
master is ready: the -D launcher may exit 0, systemd gets READY=1, and a new
master started by USR2 finishes its upgrade. After that, STATUS= follows the
worker count.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from unicornish import daemon
from unicornish.systemd import Notifier
from unicornish.workers import WorkerTable


class Readiness:
    def __init__(
        self,
        table: WorkerTable,
        notifier: Notifier,
        log: logging.Logger,
        wanted: Callable[[], int],
        not_now: Callable[[], bool],
        announce: Callable[[list[str]], None],
        ready_fd: int | None,
    ) -> None:
        self.table = table
        self.notifier = notifier
        self.log = log
        self.wanted = wanted
        self.not_now = not_now  # reloading or stopping: not the time to say ready
        self.announce = announce
        self.ready_fd = ready_fd  # -D: the launcher waits here for "ready"
        self.failed = False  # -D: the reason was sent already
        self.announced = False
        self.last_status = ""

    def ready_count(self) -> int:
        return self.table.ready_count()

    def status_line(self) -> str:
        return f"STATUS={self.ready_count()} workers running, master pid={os.getpid()}"

    def tick(self, now: float) -> float | None:
        """Nothing here needs a wake-up of its own: ready reports and deaths wake us."""
        if self.announced:
            if self.notifier.enabled:
                status = self.status_line()
                if status != self.last_status:  # the count changed (TTIN/TTOU, a crash)
                    self.last_status = status
                    self.notifier.send(status)
            return None
        if not self.not_now() and self.ready_count() >= self.wanted():
            self.announced = True
            if self.ready_fd is not None:  # -D: the launching command may now exit 0
                daemon.notify_ready(self.ready_fd, os.getpid())
                self.ready_fd = None
            self.last_status = self.status_line()
            self.announce(["READY=1", self.last_status])
        return None

    def boot_failed(self, reason: str) -> bool:
        """-D, not ready yet: the start failed; say why to the launcher. False
        when there is no launcher waiting."""
        if self.ready_fd is None:
            return False
        self.log.error("-D: the start failed: %s", reason)
        daemon.report(self.ready_fd, reason)
        self.failed = True
        return True

    def close(self, exit_code: int) -> None:
        """-D, never ready: the launcher exits 1 at this EOF, so this runs last."""
        if self.ready_fd is None:
            return
        if not self.failed:
            daemon.report(
                self.ready_fd,
                f"master pid={os.getpid()} exited {exit_code} before it was ready (see its log)",
            )
        self.close_in_child()

    def close_in_child(self) -> None:
        if self.ready_fd is not None:
            try:
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = None
