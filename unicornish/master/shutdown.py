"""How the master stops: INT, TERM, QUIT, `ctl stop`, --give-up-after, -D failures.

`state.stopping` goes None -> "draining" (with --drain: not ready, workers
still serving) -> "graceful" or "quick" (workers are being stopped). A graceful
stop with --drain first drains, and the drain duty then stops the workers;
a second graceful stop during the drain skips the rest of it. A quick stop
(INT, TERM with --term quick, `ctl stop --quick`) never drains: INT is an
operator's Ctrl-C, who wants the master gone now, and no container runtime
sends INT to stop a container.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Protocol

from unicornish.host.systemd import Notifier
from unicornish.master.children import Stopper, WorkerTable
from unicornish.master.drain import Drain, describe_plan
from unicornish.master.state import DRAINING, GRACEFUL, QUICK, State

# Quick stop (TERM/INT): how long workers get to exit before SIGKILL, at most.
QUICK_STOP_WAIT = 5.0


class Stop(Protocol):
    """Shutdown.stop, for those that may call it."""

    def __call__(
        self, quick: bool, why: str, exit_code: int | None = None, received: bool = True
    ) -> None: ...


class Shutdown:
    """The owner of `state.stopping`."""

    def __init__(
        self,
        log: logging.Logger,
        notifier: Notifier,
        stopper: Stopper,
        table: WorkerTable,
        stop_others: Callable[[float, bool, float], None],
        state: State,
    ) -> None:
        self.log = log
        self.notifier = notifier
        self.stopper = stopper
        self.table = table
        self.stop_others = stop_others  # spares and molds
        self.state = state
        self.stop_by: float | None = None  # when the whole stop must be over (pid 1's leftovers)
        self.exit_code = 0
        self.drain = Drain(log, lambda why: self.stop_workers(False, why))

    def tick(self, now: float) -> float | None:
        """The drain's end; once it has come, the graceful stop begins."""
        return self.drain.tick(now)

    def stop(
        self, quick: bool, why: str, exit_code: int | None = None, received: bool = True
    ) -> None:
        """`why`: the signal or command received (`INT`, `control stop`), or with
        `received=False` what happened (`no worker stayed up for 30s, giving up`)."""
        said = f"{why} received" if received else why
        if exit_code is not None:
            self.exit_code = exit_code
        stopping = self.state.stopping
        if stopping == QUICK or (stopping == GRACEFUL and not quick):
            self.log.info("%s: already stopping (%s)", said, stopping)
            return
        if stopping == DRAINING:
            skipped = "" if quick else " during the drain (rest of it skipped)"
            self.stop_workers(quick, f"{said}{skipped}")
            return
        settings = self.state.settings
        drain, grace = settings.drain, settings.graceful_timeout
        now = time.monotonic()
        if not quick and self.drain.start(now, drain):
            self.state.stopping = DRAINING
            self.stop_by = now + drain + grace
            self.log.info(
                "%s: draining for %gs (not ready, still serving), then graceful stop", said, drain
            )
            self.log.info("%s", describe_plan(drain, grace))
            self.notifier.send("STOPPING=1")
            return
        self.stop_workers(quick, said)

    def stop_workers(self, quick: bool, why: str) -> None:
        """The stop proper: QUIT (graceful) or TERM (quick) to every worker, SIGKILL
        after --graceful-timeout (quick: at most QUICK_STOP_WAIT)."""
        self.drain.cancel()
        if self.state.stopping is None:
            self.notifier.send("STOPPING=1")  # after a drain, sent when it began
        self.state.stopping = QUICK if quick else GRACEFUL
        self.log.info("%s: %s stop", why, self.state.stopping)
        now = time.monotonic()
        grace = self.state.settings.graceful_timeout
        wait = min(QUICK_STOP_WAIT, grace) if quick else grace
        self.stop_by = now + wait
        for w in self.table:
            if quick:
                self.stopper.stop(w, signal.SIGTERM, now, wait)
            elif not w.stopping:
                self.stopper.stop(w, signal.SIGQUIT, now, wait)
        self.stop_others(now, quick, wait)

    def leftovers_wait(self) -> float:
        """As pid 1: how long leftover processes get, within the stop's budget."""
        wait = min(QUICK_STOP_WAIT, self.state.settings.graceful_timeout)
        if self.stop_by is not None:
            # Within --drain + --graceful-timeout, which a container's grace period is
            # set from: the runtime's SIGKILL would cut the leftovers' wait short anyway.
            wait = max(0.0, min(wait, self.stop_by - time.monotonic()))
        return wait
