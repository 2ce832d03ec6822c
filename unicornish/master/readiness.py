"""Telling the world the master is ready: systemd's READY=1 and STATUS=, -D's launcher,
and the answer to "should this instance get traffic now?" (`status --ready`, /readyz).

The first time every wanted worker is ready (and no reload is under way) the
master is ready: the -D launcher may exit 0, systemd gets READY=1, and a new
master started by USR2 finishes its upgrade. After that, STATUS= follows the
worker count.

`not_ready_reason` is the one rule for readiness probes: not ready while
booting, reloading short of ready workers, draining or stopping, or with no
ready worker at all. One crashed worker of four does not make the master
unready (three still serve, and a probe that flapped on every respawn would
take the instance out of a load balancer for nothing); none at all does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from unicornish.host import daemon
from unicornish.host.systemd import Notifier
from unicornish.master.children import WorkerTable
from unicornish.master.state import View


def not_ready_reason(
    stopping: str | None, reloading: bool, booted: bool, wanted: int, ready: int
) -> str | None:
    """Why the master should get no traffic now, or None when it should.

    `stopping`: None, "draining", "graceful" or "quick"; `booted`: every wanted
    worker has been ready once since the start; `ready`: the slots (below
    `wanted`) with a ready worker.
    """
    if stopping == "draining":
        return "draining"
    if stopping is not None:
        return "stopping"
    if wanted == 0:
        return "no workers wanted"
    if ready >= wanted:
        return None
    if reloading:
        return f"reloading: {ready} of {wanted} ready"
    if not booted:
        return f"booting: {ready} of {wanted} ready"
    if ready == 0:
        return f"no worker ready: 0 of {wanted}"
    return None


class Readiness:
    def __init__(
        self,
        table: WorkerTable,
        notifier: Notifier,
        log: logging.Logger,
        view: View,
        ready_fd: int | None,
    ) -> None:
        self.table = table
        self.notifier = notifier
        self.log = log
        self.view = view
        # Says the lines of the first "ready" (the upgrade finishes one with them).
        self.announce: Callable[[list[str]], None] = lambda lines: None
        self.ready_fd = ready_fd  # -D: the launcher waits here for "ready"
        self.failed = False  # -D: the reason was sent already
        self.announced = False
        self.booted = False  # every wanted worker was ready once (announced survives no HUP)
        self.last_status = ""

    def ready_count(self) -> int:
        return self.table.ready_count()

    def ready_slots(self) -> int:
        """Slots served by a ready worker: during a HUP an old and a new worker of
        one slot count once, and a worker above a lowered count not at all."""
        wanted = self.view.wanted
        return len({w.nr for w in self.table.live() if w.ready_at is not None and w.nr < wanted})

    def reason(self) -> str | None:
        """Why this master should get no traffic now (None: it should); for
        `status` ("ready", "not_ready"), `status --ready` and readiness probes."""
        view = self.view
        return not_ready_reason(
            view.stopping, view.reloading, self.booted, view.wanted, self.ready_slots()
        )

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
        # Not while reloading or stopping (draining included).
        not_now = self.view.reloading or self.view.stopping is not None
        if not not_now and self.ready_count() >= self.view.wanted:
            self.announced = True
            self.booted = True
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
