"""The master: one loop, woken by signals, worker reports and deadlines.

Each turn reads the signals, reaps, then asks every duty to act and to say
when it next needs the master (`tick(now) -> deadline or None`), the way
Unicorn's murder_lazy_workers kills *and* returns the next sleep. The master
sleeps in one epoll_wait until the earliest of those deadlines (capped by
--poll) or an event: what it does and when it wakes come from the same code.
A duty that fails is logged (rate-limited) and retried after a pause; it
never keeps a signal, a stop or the control socket from being handled.

This module is the loop and the signal table; wiring.py builds the duties.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from unicornish.app import App
from unicornish.config import Settings
from unicornish.ctl.server import collect_status
from unicornish.host import linux, log, pid1, pidfile
from unicornish.host import listeners as listeners_module
from unicornish.host import titles as proctitle
from unicornish.host.log import ErrorLog
from unicornish.host.privileges import Identity, chown_for_workers
from unicornish.master.drain import describe_plan
from unicornish.master.spawner import Release
from unicornish.master.wiring import build
from unicornish.metrics.procstats import StatsReader
from unicornish.protocol import HANDLED_SIGNALS, MAX_WORKERS

# After a duty failed, it is asked again this much later (a signal still wakes us).
ERROR_PAUSE = 0.5
# The same failure is logged again at most this often.
ERROR_LOG_EVERY = 10.0


class Master:
    def __init__(
        self,
        settings: Settings,
        cli_values: dict[str, Any],
        app: App | None,
        listeners: list[socket.socket],
        warnings: list[str] | None = None,
        identity: Identity | None = None,
        ready_fd: int | None = None,
        control_sock: socket.socket | None = None,
        metrics_sock: socket.socket | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.log = log.get_logger()
        self.started_at = time.monotonic()
        self.listeners = listeners
        self.errors = ErrorLog(self.log, ERROR_LOG_EVERY)
        self.startup_warnings = list(warnings or [])
        self.stats = StatsReader()  # per-worker figures for `status`
        self.parts = build(
            self,
            self.log,
            settings,
            cli_values,
            app,
            listeners,
            identity,
            ready_fd,
            control_sock,
            metrics_sock,
        )
        self.state = self.parts.state
        self.loop = self.parts.loop

    # -- what hooks and the control socket read ------------------------------------

    @property
    def release(self) -> Release:
        return self.state.release

    @property
    def settings(self) -> Settings:
        """The settings in force (what `before_exec(master)` may read)."""
        return self.state.settings

    @property
    def wanted(self) -> int:
        return self.state.wanted

    @property
    def stopping(self) -> str | None:
        """None, "draining" (still serving, not ready), "graceful" or "quick"."""
        return self.state.stopping

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        self.start()
        while True:
            self.guarded("signals", self.process_signals)
            self.guarded("reaping", self.reap_all_workers)
            if self.state.stopping_workers and not len(self.parts.children):
                break
            now = time.monotonic()
            wake = now + self.settings.poll
            for name, duty in self.parts.duties:
                when = self.guarded(name, duty, now)
                if when is not None:
                    wake = min(wake, when)
            self.guarded("sleep", self.sleep, wake)
        return self.finish()

    def guarded(self, name: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step; an error is logged (rate-limited) and the step is asked
        again after ERROR_PAUSE: it can neither end nor spin the master."""
        try:
            return step(*args)
        except Exception:  # noqa: BLE001 - as Unicorn's "master loop error": never die of it
            self.errors.failed(name)
            if name == "sleep":
                self.loop.pause(ERROR_PAUSE)
            return time.monotonic() + ERROR_PAUSE

    def sleep(self, wake: float) -> None:
        before = self.loop.suspended_at
        self.loop.wait(wake)
        if self.loop.suspended_at != before:
            self.state.grace_from = self.loop.suspended_at
            self.log.warning(
                "master was suspended for %.1fs; busy workers get a fresh --timeout",
                self.loop.suspended_for,
            )

    def start(self) -> None:
        linux.load()
        self.loop.install_signals(HANDLED_SIGNALS)
        control, server = self.parts.control, self.parts.metrics.server
        if control is not None:
            control.install()
        if server is not None:
            server.install()
        proctitle.set_master_title(self.settings.app_spec, self.listeners)
        for warning in self.startup_warnings:
            self.log.warning("%s", warning)
        if self.parts.notifier.error:
            self.log.warning("%s", self.parts.notifier.error)
        for sock in self.listeners:
            self.log.info("listening on %s", listeners_module.describe(sock))
        if server is not None:
            self.log.info("metrics on http://%s/metrics", server.address)
        self.log.info(
            "master process ready pid=%d", self.pid, extra=log.event("master_ready", pid=self.pid)
        )
        self.log.info("TERM means %s stop (--term %s)", self.settings.term, self.settings.term)
        if self.settings.drain:
            # What a container's grace period must exceed, where whoever sets it reads.
            self.log.info("%s", describe_plan(self.settings.drain, self.settings.graceful_timeout))
        adaptive = self.parts.autoscale.describe()
        if adaptive:
            self.log.info("%s", adaptive)
        if self.settings.subreaper:
            pid1.become_subreaper(self.log)
        if self.pid == 1:
            self.log.info("running as pid 1: every orphan is reaped here; TERM stops everything")
        if self.settings.pid:
            pidfile.write_logged(self.settings.pid, self.log)

    # -- signals -------------------------------------------------------------------

    def process_signals(self) -> None:
        queue = self.loop.take_signals()
        ttin, ttou = queue.count(signal.SIGTTIN), queue.count(signal.SIGTTOU)
        if ttin or ttou:
            self.guarded("TTIN/TTOU", self.change_count, ttin, ttou)
        for signum in dict.fromkeys(queue):  # once each: a burst of HUPs is one reload
            handler = self.signal_handlers().get(signum)
            if handler is not None:
                self.guarded(signal.Signals(signum).name, handler)

    def signal_handlers(self) -> dict[int, Callable[[], object]]:
        return {
            signal.SIGINT: lambda: self.stop(quick=True, why="INT"),
            signal.SIGTERM: lambda: self.stop(quick=self.settings.term == "quick", why="TERM"),
            signal.SIGQUIT: lambda: self.stop(quick=False, why="QUIT"),
            signal.SIGHUP: self.parts.reloader.hup,
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGUSR2: lambda: self.upgrade("USR2"),
            signal.SIGWINCH: self.winch,
            signal.SIGCONT: self.resumed,
        }

    def resumed(self) -> None:
        self.state.grace_from = time.monotonic()

    def change_count(self, ttin: int, ttou: int) -> None:
        for why, times in (("TTIN", ttin), ("TTOU", ttou)):
            if times:
                self.step(times if why == "TTIN" else -times, why, times)

    def step(self, delta: int, why: str, times: int = 1) -> None:
        """TTIN/TTOU: one more or one fewer worker; with MIN:MAX both bounds move too."""
        if self.stopping:
            self.log.info("%s ignored: master is stopping", why)
            return
        autoscale = self.parts.autoscale
        if self.wanted + delta > MAX_WORKERS:
            self.log.warning("%s: at most %d workers; count kept", why, MAX_WORKERS)
        wanted = min(MAX_WORKERS, autoscale.shift(delta, self.wanted))
        note = ""
        if autoscale.adaptive:
            low, high = autoscale.bounds()
            note = f" (workers {low}:{high})"
        self.parts.pool.scale(wanted, why, times, note)

    def scale(self, wanted: int, why: str, times: int = 1) -> None:
        """An exact count (`ctl scale N`, WINCH): it also ends an adaptive count
        (MIN = MAX = N) until the next HUP reads the bounds again."""
        if self.stopping:
            self.log.info("%s ignored: master is stopping", why)
            return
        if wanted > MAX_WORKERS:
            self.log.warning("%s: at most %d workers; count kept", why, MAX_WORKERS)
            wanted = MAX_WORKERS
        was_adaptive = self.parts.autoscale.fix()
        note = " (a fixed count until HUP)" if was_adaptive else ""
        self.parts.pool.scale(wanted, why, times, note)

    def winch(self) -> None:
        try:
            on_tty = os.isatty(0)
        except OSError:
            on_tty = False
        if on_tty:
            self.log.info("WINCH ignored: stdin is a terminal (it sends WINCH on resize)")
            return
        self.scale(0, "WINCH")

    def reopen_logs(self) -> str | None:
        """USR1 and `ctl reopen`; returns the error, if any."""
        error = log.reopen(self.settings.log_file)
        if error:
            self.log.error("%s", error)
        else:
            self.log.info("reopened log files")
            # A new file (logrotate's `create`) must stay writable by --user workers.
            chown_error = chown_for_workers(self.settings.log_file, self.release.identity)
            if chown_error:
                self.log.warning("%s", chown_error)
        for w in self.parts.children:  # workers, spares and molds alike
            self.parts.stopper.signal(w, signal.SIGUSR1)
        return error

    def upgrade(self, why: str) -> tuple[int | None, str | None]:
        """USR2 and `ctl upgrade`: a new master beside this one."""
        return self.parts.upgrade.start(why, bool(self.stopping))

    def refork(self) -> str | None:
        """`ctl refork`: promote a worker to mold now; why not, if it cannot."""
        if self.stopping:
            return "master is stopping"
        return self.parts.reforker.by_hand()

    def stop(self, quick: bool, why: str, exit_code: int | None = None) -> None:
        """INT, TERM, QUIT, `ctl stop` (see shutdown.py)."""
        self.parts.shutdown.stop(quick, why, exit_code)

    def reload(self, why: str) -> str | None:
        """HUP (held back in a storm of them) and `ctl reload`."""
        return self.parts.reloader.reload(why)

    # -- reaping -----------------------------------------------------------------------

    def reap_all_workers(self) -> None:
        """Every child that exited: what its exit means depends on its kind (reaping.py)."""
        self.parts.pool.notice_ready(time.monotonic())  # before exits: was it ready?
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.parts.reaper.reaped(pid, status)

    def metrics_text(self) -> str:
        """`ctl metrics`: the text /metrics serves."""
        return self.parts.metrics.text()

    # -- status and exit -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        autoscale, children = self.parts.autoscale, self.parts.children
        low, high = autoscale.bounds()
        reason = self.parts.readiness.reason()
        summary = {
            "pid": self.pid,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "app": self.release.app_name,
            "workers_wanted": self.wanted,
            "workers_running": children.workers.live_count(),
            "workers_min": low,
            "workers_max": high,
            "workers_idle": autoscale.idle_count(),
            "ready": reason is None,
            "not_ready": reason,
        }
        return collect_status(summary, children.served(), self.stats)

    def finish(self) -> int:
        parts = self.parts
        if parts.control is not None:
            parts.control.close()
        if self.pid == 1:
            pid1.stop_leftovers(self.loop, self.log, parts.shutdown.leftovers_wait())
        if self.settings.pid:
            pidfile.remove_if_ours(self.settings.pid, self.pid)
            pidfile.remove_if_ours(self.settings.pid + ".oldbin", self.pid)
        # A unix socket file stays while another master serves it: our successor
        # (USR2), or the old master that started us (the back-out procedure).
        shared = parts.upgrade.pid is not None or parts.upgrade.predecessor_alive()
        listeners_module.close_all(self.listeners, unlink_unix=not shared)
        if parts.metrics.server is not None:
            parts.metrics.server.close(unlink=not shared)
        self.log.info("master exited", extra=log.event("master_exited", pid=self.pid))
        exit_code = parts.shutdown.exit_code
        parts.readiness.close(exit_code)
        return exit_code
