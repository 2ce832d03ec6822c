"""The master: one loop, woken by signals, worker reports and deadlines.

Signal handlers do nothing but wake the loop: CPython's C-level handler
writes each signal's number to our self-pipe (signal.set_wakeup_fd), and the
loop reads those bytes as its queue of signals, in order. Everything else -
reaping, spawning, killing, reloading, re-exec - happens here, in
`run()`. The loop sleeps in one epoll_wait until a signal, a worker report,
a control request or the earliest deadline (a timeout, a graceful-stop
SIGKILL, a crash-loop respawn) or --poll: no busy loop, no fixed tick.
"""

from __future__ import annotations

import gc
import math
import os
import random
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from unicornish import app as app_module
from unicornish import daemon, linux, log, pidfile, privileges, proctitle, reexec
from unicornish import listeners as listeners_module
from unicornish.app import App, AppError, load_app
from unicornish.backoff import CrashBackoff
from unicornish.config import Settings, build_settings
from unicornish.errors import StartupError
from unicornish.privileges import Identity
from unicornish.recycle import GiveUp, MemoryLimit
from unicornish.scoreboard import BOOTING, Scoreboard
from unicornish.spares import Spares
from unicornish.systemd import Notifier, monotonic_usec, watchdog_interval
from unicornish.worker import (
    EXIT_BOOT_FAILED,
    REPORT_READY,
    TRACEBACK_SIGNAL,
    Worker,
    decode_reports,
)

if TYPE_CHECKING:
    from unicornish.control import ControlServer

# Quick stop (TERM/INT): how long workers get to exit before SIGKILL, at most.
QUICK_STOP_WAIT = 5.0
# After the traceback signal, how long a stuck worker gets to dump its stack.
TRACEBACK_GRACE = 0.2
# How an unasked-for exit 0 counts for the crash-loop backoff (any non-zero code).
EXIT_UNASKED = 255
# After an unexpected error in the master's loop, wait this long (or for a signal).
LOOP_ERROR_PAUSE = 0.5
# How often the scoreboards of booting workers are looked at, for a worker
# that cannot send its ready report.
BOOT_CHECK = 0.25
# A master that woke this much later than it meant to was suspended.
OVERSLEEP = 1.0

HANDLED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCHLD,
    signal.SIGCONT,
)


def _ignore(signum: int, frame: object) -> None:
    """The loop reads the signal from the wake-up pipe; nothing to do here."""


def describe_status(status: int) -> tuple[str, int | None, int | None]:
    """`exit 0` / `killed by SIGKILL`, with the exit code or the signal number."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}", None, signum
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return f"exit {code}", code, None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(eq=False)
class WorkerProc:
    """The master's record of one worker process."""

    nr: int
    pid: int
    generation: int
    board: Scoreboard
    spawned_at: float
    spawned_wall: float
    ready_at: float | None = None
    stop_signal: str | None = None
    kill_at: float | None = None
    killed: bool = False
    timed_out: bool = False
    max_tasks: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"worker[{self.nr}]"

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None


class Master:
    def __init__(
        self,
        settings: Settings,
        cli_values: dict[str, Any],
        app: App | None,
        listeners: list[socket.socket],
        warnings: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.cli_values = cli_values
        self.app = app  # set only with --preload
        self.listeners = listeners
        self.pid = os.getpid()
        self.create_time = psutil.Process(self.pid).create_time()
        self.log = log.get_logger()
        self.started_at = time.monotonic()
        self.app_name = app_module.describe(settings.app or "")
        self.workers: dict[int, WorkerProc] = {}
        self.wanted = settings.workers
        self.generation = 0
        self.previous_app: App | None = None
        # What a failed reload goes back to (set by HUP, cleared when it is done).
        self.previous_settings: Settings | None = None
        self.previous_identity: Identity | None = None
        self.previous_wanted = self.wanted
        self.reload_wanted = self.wanted
        self.reloading = False
        self.stopping: str | None = None
        self.backoff = CrashBackoff()
        self.signal_queue: list[int] = []
        self.grace_from = 0.0
        self.reexec_pid: int | None = None
        self.is_old = False
        # Set in a master started by USR2: the old master (our parent) and
        # whether this one has finished that upgrade (reexec.take_over).
        self.old_master_pid = reexec.old_master_from_env()
        self.took_over = False
        self.notifier = Notifier()
        self.last_status = ""
        self.announced_ready = False
        self.watchdog = watchdog_interval()
        self.next_watchdog = 0.0
        self.selector = selectors.DefaultSelector()
        self._startup_warnings = list(warnings or [])
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._report_r, self._report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Extra fds (control socket, its clients) that a forked worker must close.
        self.child_closes: list[Callable[[], None]] = []
        self.timers: list[Callable[[float], float | None]] = [self._booting_deadline]
        self._fork_mask: set[int | signal.Signals] = set()
        self.control: ControlServer | None = None  # --control: set by ControlServer.install
        self.identity: Identity | None = None  # --user, resolved at start and on HUP
        self.ready_fd: int | None = None  # -D: the launcher waits here for "ready"
        self.ready_failed = False  # -D: the reason was sent already
        self.exit_code = 0
        self.memory_limit = MemoryLimit(self)
        self.give_up = GiveUp(self)
        self.timers += [self.memory_limit.next_deadline, self.give_up.next_deadline]
        self.child_closes.append(self._close_ready_fd)
        self.spares = Spares(self)  # --spares

    # -- start ----------------------------------------------------------------

    def install_signals(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._read_signals)
        self.selector.register(self._report_r, selectors.EVENT_READ, self._read_reports)

    def run(self) -> int:
        linux.load()
        self.install_signals()
        proctitle.set_master_title(self.app_name)
        for warning in self._startup_warnings:
            self.log.warning("%s", warning)
        if self.notifier.error:
            self.log.warning("%s", self.notifier.error)
        for sock in self.listeners:
            self.log.info("listening on %s", listeners_module.describe(sock))
        self.log.info("master process ready pid=%d", self.pid)
        self.log.info("TERM means %s stop (--term %s)", self.settings.term, self.settings.term)
        if self.settings.subreaper:
            self.become_subreaper()
        if self.pid == 1:
            self.log.info("running as pid 1: every orphan is reaped here; TERM stops everything")
        if self.settings.pid:
            self._write_pid_file(self.settings.pid)
        while True:
            try:
                self.process_signals()
                self.reap_all_workers()
                now = time.monotonic()
                if self.control is not None:
                    self.control.expire(now)
                self.give_up.check(now)  # before the stopping test: it may stop us
                if self.stopping:
                    self.kill_workers_past_deadline()
                    self.spares.kill_past_deadline(now)
                    if not self.workers and not self.spares.procs:
                        break
                    self.ping_watchdog()
                else:
                    self.maintain_worker_count()
                    self.spares.maintain(now)
                    self.kill_stuck_workers()
                    self.kill_workers_past_deadline()
                    self.spares.kill_past_deadline(now)
                    self.memory_limit.check(time.monotonic())
                    self.announce()
                self.sleep()
            except Exception:  # noqa: BLE001 - as Unicorn's "master loop error": never die of it
                self._loop_error()
        return self.finish()

    def _loop_error(self) -> None:
        """Log an unexpected error of the loop (a MemoryError, a bug) and go on,
        after a pause that a signal cuts short, so a lasting one cannot spin."""
        try:
            self.log.exception("master loop error; carrying on")
        except Exception:  # noqa: BLE001
            pass
        try:
            select.select([self._wake_r], [], [], LOOP_ERROR_PAUSE)
        except (OSError, ValueError):
            pass

    def _write_pid_file(self, path: str) -> None:
        try:
            pidfile.write(path, self.pid)
        except OSError as exc:
            self.log.error("cannot write pid file %s: %s", path, exc.strerror or exc)

    # -- sleeping and waking --------------------------------------------------

    def next_deadline(self, now: float) -> float:
        deadline = now + self.settings.poll
        if self.signal_queue:
            return now
        for w in self.workers.values():
            if w.kill_at is not None and not w.killed:
                deadline = min(deadline, w.kill_at)
        timeout = self.settings.timeout
        if timeout and not self.stopping:
            for w in self.workers.values():
                if w.timed_out or w.killed:
                    continue
                beat = w.board.beat[0]
                if beat:
                    deadline = min(deadline, max(beat, self.grace_from) + timeout)
                else:
                    # Not in a task (booting, idle in accept()): nothing wakes us when
                    # one starts, so look again within `timeout`. A task starting at
                    # b is then seen by b + timeout, and killed at b + timeout.
                    deadline = min(deadline, now + timeout)
        if not self.stopping:
            for nr in self.missing_slots():
                deadline = min(deadline, self.backoff.not_before(nr))
        if self.watchdog is not None and not (self.stopping and self.notifier.quiet):
            deadline = min(deadline, self.next_watchdog)  # see ping_watchdog()
        for timer in self.timers:
            when = timer(now)
            if when is not None:
                deadline = min(deadline, when)
        return deadline

    def sleep(self) -> None:
        now = time.monotonic()
        deadline = self.next_deadline(now)
        # Round up a little: waking a hair early would only mean sleeping again.
        wait = max(0.0, deadline - now)
        if wait:
            wait = math.ceil(wait * 1000) / 1000
        events = self.selector.select(wait)
        woke = time.monotonic()
        if woke - (now + wait) > OVERSLEEP:
            self.grace_from = woke
            self.log.warning(
                "master was suspended for %.1fs; busy workers get a fresh --timeout",
                woke - now - wait,
            )
        for key, _mask in events:
            callback = key.data
            callback(key.fileobj)

    def _read_signals(self, fileobj: Any) -> None:
        try:
            while True:
                data = os.read(self._wake_r, 4096)
                if not data:
                    break
                self.signal_queue.extend(data)
        except BlockingIOError:
            pass

    def _read_reports(self, fileobj: Any = None) -> None:
        now = time.monotonic()
        try:
            data = os.read(self._report_r, 65536)
        except BlockingIOError:
            data = b""
        for pid, event in decode_reports(data):
            w = self.workers.get(pid)
            if w is not None and event == REPORT_READY and w.ready_at is None:
                w.ready_at = now
        # An app that closed the fds it inherited (os.closerange() in after_fork)
        # cannot report: its scoreboard still shows it has started its loop.
        for w in self.workers.values():
            if w.ready_at is None and w.board.state[0] != BOOTING:
                w.ready_at = now

    def _booting_deadline(self, now: float) -> float | None:
        """While a worker boots, look at its scoreboard now and then (see above)."""
        if any(w.ready_at is None and not w.stopping for w in self.workers.values()):
            return now + BOOT_CHECK
        return None

    # -- signals ----------------------------------------------------------------

    def process_signals(self) -> None:
        queue, self.signal_queue = self.signal_queue, []
        for signum in queue:
            if signum == signal.SIGCHLD:
                continue  # reap_all_workers runs on every turn of the loop
            if signum == signal.SIGCONT:
                self.grace_from = time.monotonic()
                continue
            handler = self.signal_handlers().get(signum)
            if handler is not None:
                handler()

    def signal_handlers(self) -> dict[int, Callable[[], object]]:
        return {
            signal.SIGINT: lambda: self.stop(quick=True, why="INT"),
            signal.SIGTERM: lambda: self.stop(quick=self.settings.term == "quick", why="TERM"),
            signal.SIGQUIT: lambda: self.stop(quick=False, why="QUIT"),
            signal.SIGHUP: self.reload,
            signal.SIGTTIN: lambda: self.scale(self.wanted + 1, "TTIN"),
            signal.SIGTTOU: lambda: self.scale(self.wanted - 1, "TTOU"),
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGUSR2: self.reexec,
            signal.SIGWINCH: self.winch,
        }

    def scale(self, wanted: int, why: str) -> None:
        if self.stopping:
            self.log.info("%s ignored: master is stopping", why)
            return
        self.wanted = max(0, wanted)
        self.log.info("%s: %d workers wanted", why, self.wanted)

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
            chown_error = privileges.chown_for_workers(self.settings.log_file, self.identity)
            if chown_error:
                self.log.warning("%s", chown_error)
        for w in self.workers.values():
            self._signal(w, signal.SIGUSR1)
        return error

    def stop(self, quick: bool, why: str) -> None:
        if self.stopping == "quick" or (self.stopping == "graceful" and not quick):
            return
        self.stopping = "quick" if quick else "graceful"
        self.log.info("%s received: %s stop", why, self.stopping)
        self.notifier.send("STOPPING=1")
        now = time.monotonic()
        for w in list(self.workers.values()):
            if quick:
                self.stop_worker(
                    w, signal.SIGTERM, now, min(QUICK_STOP_WAIT, self.settings.graceful_timeout)
                )
            elif not w.stopping:
                self.stop_worker(w, signal.SIGQUIT, now, self.settings.graceful_timeout)
        self.spares.stop_all(now, quick)

    # -- reaping -------------------------------------------------------------------

    def reap_all_workers(self) -> None:
        self._read_reports()  # a ready report may sit in the pipe behind an exit
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            text, code, signum = describe_status(status)
            if self.spares.reaped(pid, text, code, signum):
                continue
            if pid == self.reexec_pid:
                self.new_master_exited(text)
                continue
            w = self.workers.pop(pid, None)
            if w is None:
                # Not ours: an orphan handed to us as subreaper or pid 1.
                self.on_orphan_reaped(pid, text)
                continue
            self.log.info("reaped pid=%d %s status=%s", pid, w.label, text)
            self.worker_reaped(w, code, signum)

    def on_orphan_reaped(self, pid: int, text: str) -> None:
        self.log.info("reaped orphan pid=%d status=%s", pid, text)

    def worker_reaped(self, w: WorkerProc, code: int | None, signum: int | None) -> None:
        now = time.monotonic()
        was_ready = w.ready_at is not None or w.board.state[0] != BOOTING
        ready_at = w.ready_at if w.ready_at is not None else (now if was_ready else None)
        tasks = w.board.task_count()
        w.board.close()
        self.give_up.on_reaped(w, now)
        if code == 0 and w.max_tasks and tasks >= w.max_tasks and not w.stopping:
            self.log.info("%s pid=%d recycled after %d tasks (--max-tasks)", w.label, w.pid, tasks)
        if code == EXIT_BOOT_FAILED and self.ready_fd is not None and not self.stopping:
            # -D, not ready yet: the start failed. Say why, and leave nothing running;
            # the launching command exits 1 once we are gone (the pipe closes).
            reason = f"{w.label} could not boot (exit {code}); see the log"
            self.log.error("-D: the start failed: %s", reason)
            daemon.report(self.ready_fd, reason)
            self.ready_failed = True
            self.exit_code = 1
            self.stop(quick=True, why="-D start failed")
            return
        if w.stopping or w.timed_out or self.stopping:
            return
        if not was_ready and self.reloading and w.generation == self.generation:
            self.abort_reload(w, code)
            return
        recycled = bool(w.max_tasks) and tasks >= (w.max_tasks or 0)
        # An exit 0 nobody asked for (the app calls sys.exit(0) or its after_fork
        # ends the process) right after spawning is a loop too: back off, or the
        # master would fork as fast as it can. A --max-tasks recycle is asked for.
        counted = EXIT_UNASKED if code == 0 and not recycled else code
        delay = self.backoff.record_exit(w.nr, now, ready_at, counted, signum)
        if delay > 0:
            crashes = self.backoff.crashes(w.nr)
            why = "could not boot" if code == EXIT_BOOT_FAILED else "died soon after spawning"
            if code == 0:
                why = "exited soon after spawning"
            self.log.warning(
                "%s %s (%d times in a row): crash loop, respawning in %.2fs",
                w.label,
                why,
                crashes,
                delay,
            )

    # -- keeping the count -------------------------------------------------------

    def live_workers(self) -> list[WorkerProc]:
        return [w for w in self.workers.values() if not w.stopping]

    def missing_slots(self) -> list[int]:
        have = {w.nr for w in self.live_workers() if w.generation == self.generation}
        return [nr for nr in range(self.wanted) if nr not in have]

    def maintain_worker_count(self) -> None:
        now = time.monotonic()
        current = [w for w in self.live_workers() if w.generation == self.generation]
        old = [w for w in self.live_workers() if w.generation < self.generation]
        ready_slots = {w.nr for w in current if w.ready_at is not None}
        for w in current:
            if w.nr >= self.wanted:
                self.stop_worker(w, signal.SIGQUIT, now, self.settings.graceful_timeout)
        # No old worker is stopped before one new worker proved the new app
        # boots, not even one above the new count: the reload may yet fail.
        validated = bool(ready_slots) or self.wanted == 0
        old_slots = set()
        for w in old:
            if w.nr in ready_slots or (w.nr >= self.wanted and validated):
                self.stop_worker(w, signal.SIGQUIT, now, self.settings.graceful_timeout)
            elif w.nr < self.wanted:
                old_slots.add(w.nr)
        if self.reloading and not old and ready_slots.issuperset(range(self.wanted)):
            self.reloading = False
            self.previous_app = None
            self.previous_settings = None
            if gc.get_freeze_count():
                # The old preloaded app sits in the frozen generation, out of the
                # collector's reach; thaw so it can be freed. The next fork freezes again.
                gc.unfreeze()
            self.log.info("reload done: %d workers run the new app", self.wanted)
        missing = [nr for nr in self.missing_slots() if self.backoff.not_before(nr) <= now]
        if not missing:
            return
        # Replacing a running old worker waits for the new one to be ready
        # (a few at a time): a broken reload must never cost a serving worker.
        booting_replacements = sum(1 for w in current if w.ready_at is None and w.nr in old_slots)
        batch = max(1, math.ceil(self.wanted / 4))
        to_spawn = []
        for nr in missing:
            if nr in old_slots:
                if booting_replacements >= batch:
                    continue
                booting_replacements += 1
            to_spawn.append(nr)
        if to_spawn:
            self.spawn_missing_workers(to_spawn)

    def spawn_missing_workers(self, nrs: list[int]) -> None:
        self.log.info("spawning %d missing workers:", len(nrs))
        for nr in nrs:
            if self.stopping:
                return
            if not self.spares.assign(nr):
                self.spawn_worker(nr)

    def spawn_worker(self, nr: int, assign_fd: int | None = None) -> WorkerProc | None:
        """Fork a worker for slot `nr`, or a spare (nr -1) that waits on `assign_fd`."""
        label = f"worker[{nr}]" if assign_fd is None else "spare"
        self.log.info("%s spawning..", label)
        try:
            board = Scoreboard()
        except (OSError, MemoryError) as exc:  # out of memory or address space
            why = getattr(exc, "strerror", None) or type(exc).__name__
            self.log.error("%s cannot spawn: scoreboard: %s; retrying", label, why)
            self.backoff.record_exit(nr, time.monotonic(), None, 1, None)
            return None
        max_tasks = self.worker_max_tasks()
        record = WorkerProc(
            nr=nr,
            pid=0,
            generation=self.generation,
            board=board,
            spawned_at=time.monotonic(),
            spawned_wall=time.time(),
            max_tasks=max_tasks,
        )
        probe = Worker(
            nr, self.pid, self.create_time, self.listeners, board, self.app_name, max_tasks
        )
        for hook in self.hooks("before_fork"):
            try:
                hook(probe)
            except BaseException:  # noqa: BLE001 - not even sys.exit() in the hook kills the master
                self.log.exception("%s before_fork failed", label)
        log.flush_stdio()
        if self.app is not None:
            gc.freeze()  # keep the preloaded app's pages shared after fork
        # Signals wait (blocked) until the child has its own handlers: a signal
        # caught in between would go to our wake-up pipe, as if sent to us.
        self._fork_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_mask)
            board.close()
            self.log.error("%s fork failed: %s; retrying", label, exc.strerror or exc)
            self.backoff.record_exit(nr, time.monotonic(), None, 1, None)
            return None
        if pid == 0:
            self._become_worker(probe, assign_fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_mask)
        try:
            os.setpgid(pid, pid)  # also done by the child; whoever runs first wins the race
        except OSError:
            pass
        record.pid = pid
        if assign_fd is None:
            self.workers[pid] = record
        self.log.info("%s spawned pid=%d", label, pid)
        return record

    def worker_max_tasks(self) -> int | None:
        limit: int | None = getattr(self.settings, "max_tasks", None)
        if not limit:
            return None
        # Jitter, so workers started together are not all recycled together.
        return max(1, limit + random.randint(0, max(0, limit // 10)))

    def hooks(self, name: str) -> list[Callable[..., Any]]:
        found = []
        config_hook = self.settings.hooks.get(name)
        if config_hook is not None:
            found.append(config_hook)
        if self.app is not None and name in self.app.hooks:
            found.append(self.app.hooks[name])
        return found

    def _become_worker(self, worker: Worker, assign_fd: int | None = None) -> None:
        """In the child: drop the master's machinery, run the worker, never return."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            try:
                os.setpgid(0, 0)
            except OSError:
                pass
            self.selector.close()
            for close in self.child_closes:
                close()
            if self.identity is not None:
                # Before the parent-death signal: changing uid/gid clears it.
                try:
                    privileges.drop(self.identity)
                except OSError as exc:
                    self.log.error(
                        "worker[%d] %s", worker.nr, privileges.drop_error(self.identity, exc)
                    )
                    code = EXIT_BOOT_FAILED
                    return
            linux.set_parent_death_signal(signal.SIGQUIT)
            worker.install_signals(
                self.settings.log_file, (self._wake_r, self._wake_w, self._report_r)
            )
            signal.pthread_sigmask(signal.SIG_SETMASK, self._fork_mask)
            worker.pid = os.getpid()
            code = worker.run(
                self.app, self.settings.app or "", self.settings.hooks, self._report_w, assign_fd
            )
        except BaseException:  # noqa: BLE001 - the child must never return into the master's loop
            try:
                self.log.exception("worker[%d] failed", worker.nr)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            log.flush_stdio()
            os._exit(code)

    # -- stopping workers --------------------------------------------------------

    def _signal(self, w: WorkerProc, signum: int, group: bool = False) -> None:
        try:
            if group:
                os.killpg(w.pid, signum)
            else:
                os.kill(w.pid, signum)
        except ProcessLookupError:
            if group:
                try:
                    os.kill(w.pid, signum)
                except OSError:
                    pass
        except PermissionError as exc:
            self.log.error("cannot signal %s pid=%d: %s", w.label, w.pid, exc.strerror)

    def stop_worker(self, w: WorkerProc, signum: int, now: float, wait: float) -> None:
        """Ask a worker to stop; SIGKILL its process group once `wait` has passed."""
        self._signal(w, signum, group=signum == signal.SIGTERM)
        w.stop_signal = signal_name(signum)
        deadline = now + wait
        w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)

    def kill_workers_past_deadline(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.kill_at is not None and not w.killed and now >= w.kill_at:
                if w.timed_out:
                    self.log.error("%s pid=%d killed after its task timed out", w.label, w.pid)
                elif w.stopping:
                    self.log.warning(
                        "%s pid=%d did not stop after %s; sending SIGKILL",
                        w.label,
                        w.pid,
                        w.stop_signal,
                    )
                self._signal(w, signal.SIGKILL, group=True)
                w.killed = True

    def kill_stuck_workers(self) -> None:
        timeout = self.settings.timeout
        if not timeout:
            return
        now = time.monotonic()
        for w in self.workers.values():
            if w.timed_out or w.killed:
                continue
            beat = w.board.beat[0]
            if not beat:
                continue
            started = max(beat, self.grace_from)
            if now - started >= timeout:
                w.timed_out = True
                self.log.error(
                    "%s pid=%d timed out: task running for %.1fs (--timeout %gs); "
                    "dumping its traceback, then SIGKILL",
                    w.label,
                    w.pid,
                    now - beat,
                    timeout,
                )
                self._signal(w, TRACEBACK_SIGNAL)
                w.kill_at = now + TRACEBACK_GRACE

    # -- reload (HUP) --------------------------------------------------------------

    def reload(self, why: str = "HUP") -> str | None:
        """HUP and `ctl reload`; returns why the reload was refused, if it was."""
        if self.stopping:
            return "master is stopping"
        self.log.info("%s received: reloading config and app", why)
        self.notifier.send("RELOADING=1", monotonic_usec())
        try:
            settings, warnings = build_settings(self.cli_values)
        except StartupError as exc:
            self.log.error("reload failed: %s; old settings and workers kept", exc)
            self.notifier.send("READY=1")
            return f"reload failed: {exc}; old settings and workers kept"
        for warning in warnings:
            self.log.warning("%s", warning)
        try:
            identity = privileges.resolve(settings.user) if settings.user else None
        except StartupError as exc:
            self.log.error("reload failed: %s; old settings and workers kept", exc)
            self.notifier.send("READY=1")
            return f"reload failed: {exc}; old settings and workers kept"
        new_app: App | None = None
        try:
            if settings.preload:
                new_app = load_app(settings.app or "")
            else:
                precheck_app(settings.app or "")
        except AppError as exc:
            self.log.error("reload failed: %s; old workers kept", exc)
            self.notifier.send("READY=1")
            return f"reload failed: {exc}; old workers kept"
        self.previous_settings = self.settings
        self.previous_identity = self.identity
        self.previous_wanted = self.wanted
        self.apply_settings(settings)
        self.identity = identity
        self.previous_app = self.app
        self.app = new_app
        self.set_app_name(settings.app)
        self.wanted = settings.workers
        self.reload_wanted = settings.workers
        self.generation += 1
        self.reloading = True
        self.announced_ready = False
        return None

    def set_app_name(self, spec: str | None) -> None:
        """The app's short name in titles and status (HUP may name another app)."""
        name = app_module.describe(spec or "")
        if name != self.app_name:
            self.app_name = name
            proctitle.set_master_title(name, old=self.is_old)

    def apply_settings(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        if settings.log_file != old.log_file and settings.log_file:
            error = log.reopen(settings.log_file)
            if error:
                self.log.error("%s", error)
        if settings.pid != old.pid:
            if old.pid:
                pidfile.remove_if_ours(old.pid, self.pid)
            if settings.pid:
                self._write_pid_file(settings.pid)
        if settings.listen != old.listen:
            self.log.warning("listen addresses changed: they take effect on USR2 (re-exec)")
        if settings.control != old.control:
            self.log.warning("control socket changed: it takes effect on USR2 (re-exec)")
        if settings.subreaper and not old.subreaper:
            self.become_subreaper()

    def abort_reload(self, failed: WorkerProc, code: int | None) -> None:
        self.log.error(
            "reload failed: new %s exited before it was ready (status %s); "
            "old workers and settings kept",
            failed.label,
            code,
        )
        now = time.monotonic()
        for w in self.live_workers():
            if w.generation == self.generation and w.ready_at is None:
                # QUIT, not TERM: one may be ready and serving already, its report
                # still in the pipe; it finishes that request. SIGKILL soon after.
                self.stop_worker(w, signal.SIGQUIT, now, QUICK_STOP_WAIT)
        for w in self.workers.values():
            w.generation = self.generation
        # Back to where the HUP found us: the old app (None: workers load it),
        # the old settings, and the old count unless TTIN/TTOU changed it since.
        self.app = self.previous_app
        self.previous_app = None
        if self.previous_settings is not None:
            self.apply_settings(self.previous_settings)
            self.identity = self.previous_identity
            self.set_app_name(self.settings.app)
            self.previous_settings = None
        if self.wanted == self.reload_wanted:
            self.wanted = self.previous_wanted
        self.reloading = False
        self.notifier.send("READY=1")

    # -- re-exec (USR2) -----------------------------------------------------------

    def reexec(self) -> None:
        reexec.start_new_master(self)

    def new_master_exited(self, text: str) -> None:
        reexec.new_master_exited(self, text)

    # -- systemd --------------------------------------------------------------------

    def ping_watchdog(self) -> None:
        """WATCHDOG=1 every WATCHDOG_USEC/2, stopping included (a graceful stop can
        outlast the watchdog); not after a hand-over, when the new master pings."""
        if self.watchdog is None or (self.stopping and self.notifier.quiet):
            return
        now = time.monotonic()
        if now >= self.next_watchdog:
            self.notifier.send("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog

    def announce(self) -> None:
        self.ping_watchdog()
        if self.announced_ready:
            if self.notifier.enabled:
                status = self.status_line()
                if status != self.last_status:  # the worker count changed (TTIN/TTOU, a crash)
                    self.last_status = status
                    self.notifier.send(status)
            return
        if self.reloading:
            return
        ready = [w for w in self.live_workers() if w.ready_at is not None]
        if len(ready) >= self.wanted:
            self.announced_ready = True
            self.on_ready(len(ready))

    def status_line(self) -> str:
        count = sum(1 for w in self.live_workers() if w.ready_at is not None)
        return f"STATUS={count} workers running, master pid={self.pid}"

    def on_ready(self, count: int) -> None:
        if self.ready_fd is not None:  # -D: the launching command may now exit 0
            daemon.notify_ready(self.ready_fd, self.pid)
            self.ready_fd = None
        self.last_status = self.status_line()
        lines = ["READY=1", self.last_status]
        if self.old_master_pid is not None and not self.took_over:
            reexec.take_over(self, lines)  # MAINPID= under systemd, then QUIT the old master
        else:
            self.notifier.send(*lines)

    # -- exit -------------------------------------------------------------------------

    def become_subreaper(self) -> None:
        if linux.set_child_subreaper():
            self.log.info("child subreaper: orphaned descendants of workers are reaped here")
        else:
            self.log.error("--subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed")

    def _close_ready_fd(self) -> None:
        if self.ready_fd is not None:
            try:
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = None

    def stop_leftovers(self) -> None:
        """As pid 1 (a container's init), whatever still runs is ours to stop and reap:
        TERM to every process of the namespace, then SIGKILL after a short wait."""
        try:
            leftovers = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return
        if not leftovers:
            return
        self.log.info("pid 1: sending TERM to %d leftover processes", len(leftovers))
        try:
            os.kill(-1, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + min(QUICK_STOP_WAIT, self.settings.graceful_timeout)
        # Only the wake-up pipe (SIGCHLD): a pending report or control client
        # must not turn this wait into a busy loop.
        waiter = selectors.DefaultSelector()
        waiter.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._wait_for_leftovers(deadline, waiter)
        finally:
            waiter.close()

    def _wait_for_leftovers(self, deadline: float, waiter: selectors.BaseSelector) -> None:
        sent_kill = False
        while True:
            try:
                while True:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        break
                    self.on_orphan_reaped(pid, describe_status(status)[0])
            except ChildProcessError:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if sent_kill:
                    return
                self.log.warning("pid 1: leftover processes did not exit; sending SIGKILL")
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
                sent_kill = True
                deadline = time.monotonic() + 1.0
                continue
            waiter.select(remaining)  # SIGCHLD wakes us through the wake-up pipe
            self._read_signals(None)
            self.signal_queue.clear()

    def finish(self) -> int:
        if self.control is not None:
            self.control.close()
        if self.pid == 1:
            self.stop_leftovers()
        if self.settings.pid:
            pidfile.remove_if_ours(self.settings.pid, self.pid)
            pidfile.remove_if_ours(self.settings.pid + ".oldbin", self.pid)
        # A unix socket file stays while another master serves it: our successor
        # (USR2), or the old master that started us (the back-out procedure).
        shared = self.reexec_pid is not None or reexec.predecessor_alive(self)
        listeners_module.close_all(self.listeners, unlink_unix=not shared)
        self.log.info("master exited")
        if self.ready_fd is not None:
            # -D, never ready: the launcher exits 1 at this EOF, so only once
            # everything above (pid file, sockets) is cleaned up.
            if not self.ready_failed:
                daemon.report(
                    self.ready_fd,
                    f"master pid={self.pid} exited {self.exit_code} before it was ready "
                    "(see its log)",
                )
            self._close_ready_fd()
        return self.exit_code


def precheck_app(spec: str) -> None:
    """Catch a syntax error in the master, without running the app's code."""
    if not app_module.is_path(spec):
        return
    try:
        with open(spec, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise AppError(f"cannot read app file {spec}: {exc.strerror}") from None
    try:
        compile(source, spec, "exec")
    except SyntaxError as exc:
        raise AppError(
            f"cannot load app {spec}: SyntaxError: {exc.msg}"
            + (f" (line {exc.lineno})" if exc.lineno else "")
        ) from None
    except ValueError as exc:
        raise AppError(f"cannot load app {spec}: {exc}") from None
