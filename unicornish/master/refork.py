"""--refork-after and `ctl refork`: a warm worker becomes the mold new workers fork from.

The master decides: a worker of the current generation says it is warm
(REPORT_WARM, once it has done the task count of its release), or `ctl
refork` picks the ready worker with the most tasks. That worker leaves its
slot at once (the pool refills it from the current template, so the count
of serving workers never drops), gets PROMOTE_SIGNAL, finishes its task,
runs `after_mold` and connects to the mold socket. From that connection on a
new generation forks from it, rolled out one slot at a time like a HUP
(reload.py); when it is complete the previous mold is retired.

Failure is never worse than no reforking: a promoted worker that dies or is
not connected within --graceful-timeout, or a mold that cannot fork, is given
up (logged) and workers fork from the master again; after three failed
promotions in a row, reforking is off until the next HUP.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable

from unicornish.host import linux
from unicornish.master.children import MOLD, Children, Stopper, WorkerProc
from unicornish.master.eventloop import EventLoop
from unicornish.master.moldlink import MoldLink
from unicornish.master.spawner import Release
from unicornish.master.state import View
from unicornish.protocol import PROMOTE_SIGNAL
from unicornish.worker.mold import peer_pid

# Failed promotions in a row after which reforking stops until a HUP.
MAX_FAILURES = 3


class Reforker:
    def __init__(
        self,
        loop: EventLoop,
        log: logging.Logger,
        children: Children,
        stopper: Stopper,
        address: str,
        view: View,
        start_generation: Callable[[MoldLink], bool],
    ) -> None:
        self.loop = loop
        self.log = log
        # Its molds (the promoted worker, the mold, the one it replaces) are
        # children.molds; a promoted worker changes kind there.
        self.children = children
        self.table = children.workers
        self.stopper = stopper
        self.address = address
        self.view = view
        self.start_generation = start_generation
        self.links: dict[int, MoldLink] = {}
        self.listener: socket.socket | None = None
        self.promoting: WorkerProc | None = None
        self.deadline: float | None = None
        self.failures = 0
        self.off = False  # too many failures: until the next HUP
        # Workers that said they are warm while no promotion could start (one was
        # under way, or a reload): the next chance goes to them.
        self.warm_pids: set[int] = set()

    def release(self) -> Release:
        return self.view.release

    def busy(self) -> bool:
        """Stopping (draining included), or a reload or refork rolling out."""
        return self.view.rolling is not None or self.view.stopping is not None

    # -- promotion ---------------------------------------------------------------------

    def warm(self, w: WorkerProc) -> None:
        """A worker did its --refork-after count of tasks."""
        self.warm_pids.add(w.pid)
        self.promote_warm()

    def promote_warm(self) -> None:
        release = self.release()
        if self.off or not release.refork_at or self.promoting is not None or self.busy():
            return
        for pid in list(self.warm_pids):
            self.warm_pids.discard(pid)
            w = self.table.get(pid)
            if w is not None and w.generation == release.generation and not w.stopping:
                self.promote(w, f"after {release.refork_at} tasks")
                return

    def by_hand(self) -> str | None:
        """`ctl refork`: the ready worker with the most tasks; why not, if it cannot."""
        if self.promoting is not None:
            return f"a promotion is under way (pid={self.promoting.pid})"
        if self.busy():
            return "a reload or a refork is under way"
        generation = self.release().generation
        ready = [w for w in self.table.live() if w.generation == generation and w.ready_at]
        if not ready:
            return "no ready worker to promote"
        return self.promote(max(ready, key=lambda w: w.board.task_count()), "ctl refork")

    def promote(self, w: WorkerProc, why: str) -> str | None:
        failure = self.listen()
        if failure:
            self.log.error("%s", failure)
            return failure
        self.children.change_kind(w, MOLD)
        w.board.promote[0] = 1
        self.stopper.signal(w, PROMOTE_SIGNAL)
        self.promoting = w
        self.deadline = time.monotonic() + self.release().settings.graceful_timeout
        self.log.info("worker[%d] pid=%d becoming the mold (%s)", w.nr, w.pid, why)
        return None

    def listen(self) -> str | None:
        if self.listener is not None:
            return None
        # The mold's children must be reparented here, not to init.
        if not linux.set_child_subreaper():
            return "refork: prctl(PR_SET_CHILD_SUBREAPER) failed; workers fork from the master"
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        try:
            sock.bind(self.address)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            return f"refork: cannot open the mold socket: {exc.strerror or exc}"
        self.listener = sock
        self.loop.add_reader(sock.fileno(), self.accept)
        self.loop.close_in_child(self.close_in_child)
        return None

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.error("refork: accept failed: %s", exc.strerror or exc)
                return
            w = self.promoting
            if w is None or peer_pid(conn) != w.pid:
                conn.close()  # not the worker we promoted: nobody else may fork here
                continue
            link = MoldLink(w.pid, conn)
            self.links[w.pid] = link
            self.promoting = self.deadline = None
            if not self.start_generation(link):
                self.log.info("mold pid=%d not used: the master is busy; retiring it", w.pid)
                self.retire(link, time.monotonic())
                continue
            self.log.info(
                "mold pid=%d ready (worker[%d] after %d tasks); replacing workers with its forks",
                w.pid,
                w.nr,
                w.board.task_count(),
            )

    # -- the duty and what the master tells us -------------------------------------------

    def tick(self, now: float) -> float | None:
        """A promoted worker that does not connect in time is killed."""
        if self.warm_pids:
            self.promote_warm()
        w = self.promoting
        if w is None or self.deadline is None:
            return None
        if now < self.deadline:
            return self.deadline
        self.log.error(
            "mold pid=%d not ready after %gs; killing it, workers fork from the master",
            w.pid,
            self.release().settings.graceful_timeout,
        )
        self.stopper.signal(w, signal.SIGKILL, group=True)
        self.stopper.mark_stopping(w, "KILL")
        self.promotion_failed()
        return None

    def reaped(self, w: WorkerProc, status: str) -> None:
        """A mold (or promoted worker) exited (it is out of the record already)."""
        pid = w.pid
        self.log.info("reaped pid=%d mold status=%s", pid, status)
        if w is self.promoting:
            self.log.error(
                "refork failed: mold pid=%d exited before it was ready (status %s); "
                "workers fork from the master",
                pid,
                status,
            )
            self.promotion_failed()
        link = self.links.pop(pid, None)
        if link is not None:
            if link.usable and not w.stopping:
                self.log.warning("mold pid=%d died; new workers fork from the master", pid)
            link.close()

    def promotion_failed(self) -> None:
        self.promoting = self.deadline = None
        self.failures += 1
        if self.failures >= MAX_FAILURES and not self.off:
            self.off = True
            self.log.error("refork: %d failed promotions in a row; off until HUP", self.failures)

    def mold_failed(self, link: MoldLink) -> None:
        """The mold could not fork (dead, hung, fork failed): it is given up."""
        link.close()
        w = self.children.molds.get(link.pid)
        if w is not None and not w.stopping:
            self.stopper.signal(w, signal.SIGKILL, group=True)
            self.stopper.mark_stopping(w, "KILL")

    def settled(self, kind: str, result: str, current: Release) -> None:
        """A reload or refork is done or failed: molds the workers no longer fork
        from are retired (the previous one after a refork, every one after a HUP)."""
        if kind == "refork":
            if result == "done":
                self.failures = 0
            else:
                self.promotion_failed()
        now = time.monotonic()
        for link in list(self.links.values()):
            if link is not current.mold:
                self.retire(link, now)

    def reset(self) -> None:
        """HUP: the app file again, and reforking starts over."""
        self.failures = 0
        self.off = False

    def retire(self, link: MoldLink, now: float) -> None:
        link.close()  # EOF on its socket ends the mold, as QUIT does
        w = self.children.molds.get(link.pid)
        if w is not None and not w.stopping:
            self.stopper.stop(w, signal.SIGQUIT, now, self.release().settings.graceful_timeout)

    def stop_all(self, now: float, quick: bool, wait: float) -> None:
        """The master stops: the molds get the workers' signal and wait."""
        for w in self.children.molds:
            self.stopper.stop(w, signal.SIGTERM if quick else signal.SIGQUIT, now, wait)
        self.promoting = self.deadline = None

    def close_in_child(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for link in self.links.values():
            link.sock.close()
