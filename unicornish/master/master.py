"""The master: one loop, woken by signals, worker reports and deadlines.

Each turn reads the signals, reaps, then asks every duty to act and to say
when it next needs the master (`tick(now) -> deadline or None`), the way
Unicorn's murder_lazy_workers kills *and* returns the next sleep. The master
sleeps in one epoll_wait until the earliest of those deadlines (capped by
--poll) or an event: what it does and when it wakes come from the same code.
A duty that fails is logged (rate-limited) and retried after a pause; it
never keeps a signal, a stop or the control socket from being handled.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from unicornish import __version__
from unicornish import app as app_module
from unicornish.app import App
from unicornish.config import Settings
from unicornish.ctl.server import ControlServer, collect_status
from unicornish.host import linux, log, pid1, pidfile
from unicornish.host import listeners as listeners_module
from unicornish.host import titles as proctitle
from unicornish.host.privileges import Identity, chown_for_workers
from unicornish.host.systemd import Notifier, Watchdog
from unicornish.master.autoscale import Autoscaler, handover
from unicornish.master.children import Stopper, WorkerProc, WorkerTable
from unicornish.master.deaths import OOM, OOM_SUFFIX, Deaths
from unicornish.master.drain import describe_plan
from unicornish.master.eventloop import ErrorLog, EventLoop
from unicornish.master.pool import Pool
from unicornish.master.readiness import Readiness, not_ready_reason
from unicornish.master.recycle import GiveUp, MemoryLimit
from unicornish.master.refork import Reforker
from unicornish.master.reload import Reloader, apply_settings
from unicornish.master.shutdown import Shutdown
from unicornish.master.spares import Spares
from unicornish.master.spawner import Release, Spawner
from unicornish.master.timeouts import Timeouts
from unicornish.master.upgrade import Upgrade, handed_count
from unicornish.metrics.appmetrics import AppMetrics
from unicornish.metrics.families import MasterCollector, Metrics, Tallies
from unicornish.metrics.procstats import StatsReader
from unicornish.protocol import (
    EXIT_BOOT_FAILED,
    HANDLED_SIGNALS,
    MAX_WORKERS,
    describe_status,
)
from unicornish.scoreboard import Scoreboard
from unicornish.worker import mold

# After a duty failed, it is asked again this much later (a signal still wakes us).
ERROR_PAUSE = 0.5
# The same failure is logged again at most this often.
ERROR_LOG_EVERY = 10.0

Duty = Callable[[float], "float | None"]


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
        self.grace_from = 0.0  # busy workers' --timeout counts from here after a suspension
        self.errors = ErrorLog(self.log, ERROR_LOG_EVERY)
        self.startup_warnings = list(warnings or [])
        self.loop = EventLoop()
        self.notifier = Notifier()
        self.table = table = WorkerTable()
        self.stopper = Stopper(self.log, [table])
        self.shutdown = Shutdown(
            self.log,
            self.notifier,
            self.stopper,
            table,
            self.stop_others,
            lambda: self.settings,
        )
        # Metrics for the master's endpoint (collect() objects): the apps' own,
        # summed over workers and kept across their deaths, and deaths by cause.
        # Spares are left out (they have not served); a mold counts what it did as a worker.
        self.app_metrics = AppMetrics(
            lambda: [
                w.arena for t in (table, self.reforker.molds) for w in t if w.arena is not None
            ]
        )
        self.deaths = Deaths()  # reads the cgroup's OOM-kill count now, at start
        self.stats = StatsReader()  # per-worker figures for `status`
        self.build_workers(settings, app, identity, cli_values)
        handed = handed_count(self.log)  # USR2: the count the old master had
        if handed is not None:
            wanted, bounds, old_pid = handed
            self.pool.scale(self.autoscale.take_over(wanted, bounds, settings))
            low, high = self.autoscale.bounds()
            self.log.info(
                "workers: %d wanted (%d:%d), as old master pid=%d had them; HUP goes back "
                "to the configured count",
                self.pool.wanted,
                low,
                high,
                old_pid,
            )
        self.build_operations(settings, ready_fd, control_sock)
        self.build_metrics(metrics_sock)
        self.duties = self.build_duties()

    def build_workers(
        self,
        settings: Settings,
        app: App | None,
        identity: Identity | None,
        cli_values: dict[str, Any],
    ) -> None:
        """The pool, its spares and the release they run, and how they are forked."""
        loop, table = self.loop, self.table
        report_r, report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(report_r, lambda: self.pool.read_reports(report_r))
        loop.close_in_child(lambda: os.close(report_r))
        create_time = psutil.Process(self.pid).create_time()
        address = mold.new_address(self.pid)
        spawner = Spawner(loop, self.log, self.pid, create_time, self.listeners, report_w, address)
        self.pool = Pool(
            table, spawner, self.stopper, self.log, self.current, self.is_stopping, settings.workers
        )
        release = Release(settings, app, identity, app_module.describe(settings.app_spec))
        self.reloader = Reloader(
            release,
            cli_values,
            self.pool,
            self.stopper,
            self.notifier,
            self.log,
            self.switched,
            lambda: self.stopping is not None,  # draining included: no reload on the way out
        )
        self.spares = Spares(
            spawner,
            self.stopper,
            self.pool.backoff,
            table,
            self.log,
            self.current,
            lambda: self.pool.wanted,
            self.is_stopping,
        )
        self.pool.spares = self.spares
        self.autoscale = Autoscaler(
            table,
            self.log,
            settings,
            lambda: self.pool.wanted,
            self.pool.scale,
            self.is_stopping,
            lambda: self.pool.reloading,
        )
        self.stopper.tables.append(self.spares.procs)
        loop.close_in_child(self.spares.close_in_child)
        self.reforker = Reforker(
            loop,
            self.log,
            table,
            self.stopper,
            address,
            self.current,
            lambda: self.reloader.rolling is not None or self.stopping is not None,
            self.reloader.refork,
        )
        self.stopper.tables.append(self.reforker.molds)
        self.pool.on_warm = self.reforker.warm
        spawner.mold_failed = self.reforker.mold_failed
        self.reloader.on_settled = self.reforker.settled
        self.reloader.on_reload = self.reforker.reset

    def build_operations(
        self, settings: Settings, ready_fd: int | None, control_sock: socket.socket | None
    ) -> None:
        """USR2, readiness (systemd, -D) and the control socket."""
        loop, table, listeners = self.loop, self.table, self.listeners
        self.upgrade_ = Upgrade(
            self.log,
            self.notifier,
            listeners,
            lambda: self.settings.pid,
            lambda: self.readiness.status_line(),
            lambda old: proctitle.set_master_title(self.settings.app_spec, listeners, old=old),
            self.run_before_exec,
        )
        self.readiness = Readiness(
            table,
            self.notifier,
            self.log,
            lambda: self.pool.wanted,
            lambda: self.reloader.reloading() or self.stopping is not None,
            self.upgrade_.announce_ready,
            ready_fd,
        )
        loop.close_in_child(self.readiness.close_in_child)
        self.upgrade_.hand_over = lambda: handover(
            self.settings, self.autoscale.policy, self.pool.wanted
        )
        self.control: ControlServer | None = None
        if control_sock is not None and settings.control:
            self.control = ControlServer(loop, self.log, self, control_sock, settings.control)
            self.upgrade_.control = self.control

    def build_metrics(self, sock: socket.socket | None) -> None:
        """Counts kept as things happen, the collectors, and with --metrics the
        HTTP endpoint (prometheus_client is imported only then, or on the first
        `ctl metrics`)."""
        tallies = Tallies()
        # Workers forked from now on record task durations only if they can be read.
        Scoreboard.record_durations = sock is not None or self.control is not None
        self.reloader.on_result = lambda result: tallies.count("reloads", result)
        self.upgrade_.on_result = lambda result: tallies.count("upgrades", result)
        master = MasterCollector(
            self.table,
            lambda: self.pool.wanted,
            lambda: len(self.spares.procs),
            self.pool.held_back,
            self.listeners,
            tallies,
            __version__,
            self.reforker.molds,
        )
        self.metrics = Metrics([master, self.app_metrics, self.deaths], tallies)
        if sock is None:
            return
        from unicornish.metrics.endpoint import Endpoints, MetricsServer

        endpoints = Endpoints(self.metrics.render, self.not_ready_reason, self.log)
        self.metrics.server = MetricsServer(self.loop, self.log, sock, endpoints)
        self.upgrade_.metrics = self.metrics.server
        self.upgrade_.metrics_fd = sock.fileno()

    def build_duties(self) -> list[tuple[str, Duty]]:
        table = self.table
        grace_from = lambda: self.grace_from  # noqa: E731
        # Draining workers still serve: --timeout, --max-memory and respawns go on.
        timeout = lambda: None if self.is_stopping() else self.settings.timeout  # noqa: E731
        self.memory = MemoryLimit(
            table,
            self.stopper,
            self.log,
            lambda: self.settings.max_memory,
            lambda: self.settings.graceful_timeout,
            self.is_stopping,
        )
        self.give_up = GiveUp(
            table,
            self.log,
            lambda: None if self.is_stopping() else self.settings.give_up_after,
            lambda: self.pool.wanted,
            grace_from,
            lambda: self.stop(
                quick=True,
                why=f"no worker stayed up for {self.settings.give_up_after:g}s, giving up",
                exit_code=1,
                received=False,
            ),
            time.monotonic(),
        )
        # In this order: a duty may change what a later one sees (a reload, the
        # pool's stops), and the stop deadlines are looked at last.
        duties: list[tuple[str, Duty]] = [
            ("drain", self.shutdown.tick),
            ("pending reload", self.reloader.tick),
            # Before the pool: the count it decides is acted on in the same turn.
            ("autoscale", self.autoscale.tick),
            ("pool", self.pool.tick),
            ("spares", self.spares.tick),
            ("timeouts", Timeouts(table, self.stopper, self.log, timeout, grace_from).tick),
            ("max-memory", self.memory.tick),
            ("give-up", self.give_up.tick),
            ("readiness", self.readiness.tick),
            ("watchdog", Watchdog(self.notifier, self.is_stopping).tick),
            ("scale log", self.pool.scale_log.tick),
            ("refork", self.reforker.tick),
        ]
        if self.control is not None:
            duties.append(("control", self.control.tick))
        if self.metrics.server is not None:
            duties.append(("metrics", self.metrics.server.tick))
        duties.append(("stop deadlines", self.stopper.tick))
        return duties

    # -- what the duties read ---------------------------------------------------

    @property
    def release(self) -> Release:
        return self.reloader.current

    @property
    def settings(self) -> Settings:
        return self.release.settings

    @property
    def wanted(self) -> int:
        return self.pool.wanted

    def current(self) -> Release:
        return self.release

    @property
    def stopping(self) -> str | None:
        """None, "draining" (still serving, not ready), "graceful" or "quick"."""
        return self.shutdown.state

    def is_stopping(self) -> bool:
        """Workers are being stopped (a drain is not that yet: they still serve)."""
        return self.shutdown.stopping_workers

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        self.start()
        while True:
            self.guarded("signals", self.process_signals)
            self.guarded("reaping", self.reap_all_workers)
            if self.is_stopping() and not any(len(t) for t in self.stopper.tables):
                break
            now = time.monotonic()
            wake = now + self.settings.poll
            for name, duty in self.duties:
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
            self.grace_from = self.loop.suspended_at
            self.log.warning("master was suspended; busy workers get a fresh --timeout")

    def start(self) -> None:
        linux.load()
        self.loop.install_signals(HANDLED_SIGNALS)
        if self.control is not None:
            self.control.install()
        if self.metrics.server is not None:
            self.metrics.server.install()
        proctitle.set_master_title(self.settings.app_spec, self.listeners)
        for warning in self.startup_warnings:
            self.log.warning("%s", warning)
        if self.notifier.error:
            self.log.warning("%s", self.notifier.error)
        for sock in self.listeners:
            self.log.info("listening on %s", listeners_module.describe(sock))
        if self.metrics.server is not None:
            self.log.info("metrics on http://%s/metrics", self.metrics.server.address)
        self.log.info(
            "master process ready pid=%d", self.pid, extra=log.event("master_ready", pid=self.pid)
        )
        self.log.info("TERM means %s stop (--term %s)", self.settings.term, self.settings.term)
        if self.settings.drain:
            # What a container's grace period must exceed, where whoever sets it reads.
            self.log.info("%s", describe_plan(self.settings.drain, self.settings.graceful_timeout))
        adaptive = self.autoscale.describe()
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
            signal.SIGHUP: self.reloader.hup,
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGUSR2: lambda: self.upgrade("USR2"),
            signal.SIGWINCH: self.winch,
            signal.SIGCONT: self.resumed,
        }

    def resumed(self) -> None:
        self.grace_from = time.monotonic()

    def change_count(self, ttin: int, ttou: int) -> None:
        for why, times in (("TTIN", ttin), ("TTOU", ttou)):
            if times:
                self.step(times if why == "TTIN" else -times, why, times)

    def step(self, delta: int, why: str, times: int = 1) -> None:
        """TTIN/TTOU: one more or one fewer worker; with MIN:MAX both bounds move too."""
        if self.stopping:
            self.log.info("%s ignored: master is stopping", why)
            return
        if self.pool.wanted + delta > MAX_WORKERS:
            self.log.warning("%s: at most %d workers; count kept", why, MAX_WORKERS)
        wanted = min(MAX_WORKERS, self.autoscale.shift(delta, self.pool.wanted))
        note = ""
        if self.autoscale.adaptive:
            low, high = self.autoscale.bounds()
            note = f" (workers {low}:{high})"
        self.pool.scale(wanted, why, times, note)

    def scale(self, wanted: int, why: str, times: int = 1) -> None:
        """An exact count (`ctl scale N`, WINCH): it also ends an adaptive count
        (MIN = MAX = N) until the next HUP reads the bounds again."""
        if self.stopping:
            self.log.info("%s ignored: master is stopping", why)
            return
        if wanted > MAX_WORKERS:
            self.log.warning("%s: at most %d workers; count kept", why, MAX_WORKERS)
            wanted = MAX_WORKERS
        was_adaptive = self.autoscale.fix()
        note = " (a fixed count until HUP)" if was_adaptive else ""
        self.pool.scale(wanted, why, times, note)

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
        for w in self.table:
            self.stopper.signal(w, signal.SIGUSR1)
        self.spares.reopen_logs()
        self.reforker.reopen_logs()
        return error

    def upgrade(self, why: str) -> tuple[int | None, str | None]:
        """USR2 and `ctl upgrade`: a new master beside this one."""
        return self.upgrade_.start(why, bool(self.stopping))

    def run_before_exec(self) -> None:
        for hook in self.release.hooks("before_exec"):
            try:
                hook(self)
            except BaseException:  # noqa: BLE001 - not even sys.exit() in the hook kills the master
                self.log.exception("before_exec failed")

    def stop_others(self, now: float, quick: bool, wait: float) -> None:
        """What a stop does besides the workers: spares and molds."""
        self.spares.stop_all(now, quick, wait)
        self.reforker.stop_all(now, quick, wait)

    def refork(self) -> str | None:
        """`ctl refork`: promote a worker to mold now; why not, if it cannot."""
        if self.stopping:
            return "master is stopping"
        return self.reforker.by_hand()

    def stop(
        self, quick: bool, why: str, exit_code: int | None = None, received: bool = True
    ) -> None:
        """INT, TERM, QUIT, `ctl stop`, --give-up-after (see shutdown.py)."""
        self.shutdown.stop(quick, why, exit_code, received)

    def not_ready_reason(self) -> str | None:
        """Why this master should get no traffic now (None: it should); for
        `status` ("ready", "not_ready"), `status --ready` and readiness probes."""
        return not_ready_reason(
            self.stopping,
            self.reloader.reloading(),
            self.readiness.booted,
            self.pool.wanted,
            self.readiness.ready_slots(),
        )

    # -- reload (HUP) ----------------------------------------------------------------

    def reload(self, why: str) -> str | None:
        return self.reloader.reload(why)

    def switched(self, old: Release, new: Release) -> None:
        """What changes for the master itself with a new release."""
        apply_settings(old.settings, new.settings, self.log)
        before = self.autoscale.policy  # as TTIN/TTOU or `ctl scale` left it
        self.autoscale.configure(new.settings)
        adaptive = self.autoscale.describe()
        if adaptive and self.autoscale.policy != before:
            self.log.info("%s", adaptive)
        if new.settings.app_spec != old.settings.app_spec:
            proctitle.set_master_title(new.settings.app_spec, self.listeners, self.upgrade_.is_old)
        self.readiness.announced = False

    # -- reaping -----------------------------------------------------------------------

    def reap_all_workers(self) -> None:
        self.pool.notice_ready(time.monotonic())  # before exits: was it ready?
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            text, code, signum = describe_status(status)
            w = self.table.pop(pid)
            if w is None:
                promoted = self.reforker.reaped(pid, text)
                if promoted is not None:
                    board = promoted.board
                    self.metrics.tallies.worker_reaped(
                        promoted.nr, board.task_count(), board.task_durations()
                    )
                    self.retire_pages(promoted)
                    continue
                spare = self.spares.procs.get(pid)
                # Every SIGKILL is checked, so an OOM kill explains one death only.
                if self.deaths.out_of_memory(signum, spare is not None and spare.killed):
                    text += OOM_SUFFIX
                if self.spares.reaped(pid, text, code, signum):
                    continue
                if pid == self.upgrade_.pid:
                    self.upgrade_.exited(text, bool(self.stopping))
                    continue
                # Not ours: an orphan handed to us as subreaper or pid 1.
                self.log.info(
                    "reaped orphan pid=%d status=%s",
                    pid,
                    text,
                    extra=log.event("orphan_reaped", pid=pid, status=text),
                )
                continue
            cause = self.deaths.record(w, code, signum, time.monotonic())
            if cause == OOM:
                text += OOM_SUFFIX
            self.log.info(
                "reaped pid=%d %s status=%s",
                pid,
                w.label,
                text,
                extra=log.event("worker_reaped", pid=pid, nr=w.nr, status=text, cause=cause),
            )
            self.worker_reaped(w, code, signum)

    def worker_reaped(self, w: WorkerProc, code: int | None, signum: int | None) -> None:
        now = time.monotonic()
        was_ready = w.started_loop()
        if was_ready and w.ready_at is None:
            w.ready_at = now
        tasks = w.board.task_count()
        durations = w.board.task_durations()
        self.metrics.tallies.worker_reaped(w.nr, tasks, durations)
        self.retire_pages(w)
        self.give_up.on_reaped(w, now)
        if code == 0 and w.max_tasks and tasks >= w.max_tasks and not w.stopping:
            self.log.info("%s pid=%d recycled after %d tasks (--max-tasks)", w.label, w.pid, tasks)
        if code == EXIT_BOOT_FAILED and not self.is_stopping():
            reason = f"{w.label} could not boot (exit {code}); see the log"
            if self.readiness.boot_failed(reason):
                # -D, not ready yet: leave nothing running; the launcher exits 1.
                self.stop(quick=True, why="-D start failed", exit_code=1, received=False)
                return
        if w.stopping or w.timed_out or self.is_stopping():  # a drain still replaces workers
            return
        if not was_ready and self.reloader.rolling and w.generation == self.release.generation:
            self.reloader.abort(w, code, self.table)
            return
        self.pool.record_exit(w, code, signum, now, tasks)

    def retire_pages(self, w: WorkerProc) -> None:
        w.board.close()
        if w.arena is not None:
            # Its counters and histograms live on in the totals; the arena goes.
            self.app_metrics.retire(w.arena)
            w.arena = None

    def metrics_text(self) -> str:
        """`ctl metrics`: the text /metrics serves."""
        return self.metrics.text()

    # -- status and exit -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        low, high = self.autoscale.bounds()
        summary = {
            "pid": self.pid,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "app": self.release.app_name,
            "workers_wanted": self.pool.wanted,
            "workers_running": self.table.live_count(),
            "workers_min": low,
            "workers_max": high,
            "workers_idle": self.autoscale.idle_count(),
        }
        reason = self.not_ready_reason()
        summary["ready"] = reason is None
        summary["not_ready"] = reason
        return collect_status(summary, [*self.table, *self.reforker.molds], self.stats)

    def finish(self) -> int:
        if self.control is not None:
            self.control.close()
        if self.pid == 1:
            pid1.stop_leftovers(self.loop, self.log, self.shutdown.leftovers_wait())
        if self.settings.pid:
            pidfile.remove_if_ours(self.settings.pid, self.pid)
            pidfile.remove_if_ours(self.settings.pid + ".oldbin", self.pid)
        # A unix socket file stays while another master serves it: our successor
        # (USR2), or the old master that started us (the back-out procedure).
        shared = self.upgrade_.pid is not None or self.upgrade_.predecessor_alive()
        listeners_module.close_all(self.listeners, unlink_unix=not shared)
        if self.metrics.server is not None:
            self.metrics.server.close(unlink=not shared)
        self.log.info("master exited", extra=log.event("master_exited", pid=self.pid))
        self.readiness.close(self.shutdown.exit_code)
        return self.shutdown.exit_code
