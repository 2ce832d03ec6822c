"""The worker process: the object the app sees, its signals, and its boot up to its kind.

Everything here runs in the forked child. `Worker.run()` never returns into
the master's code: the caller turns its result into os._exit().
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from unicornish.app import App, AppError, CompiledApp
from unicornish.config import Settings
from unicornish.host import linux, log
from unicornish.host import titles as proctitle
from unicornish.host.sockets import OUT_OF_RESOURCES
from unicornish.metrics import appmetrics
from unicornish.protocol import (
    BECAME_MOLD,
    EXIT_BOOT_FAILED,
    EXIT_OK,
    PROMOTE_SIGNAL,
    REPORT_READY,
    REPORT_WARM,
    TASK_DURATION_BUCKETS,
    TRACEBACK_SIGNAL,
    decode_slot,
    encode_report,
)
from unicornish.scoreboard import BUSY, IDLE, MOLD, Scoreboard
from unicornish.worker.kinds import kind_module

# How often an idle worker in accept() re-checks its master by itself, in case
# an app replaced our QUIT handler (the parent-death signal then goes unseen).
_ACCEPT_CHECK_SECONDS = 1.0
# accept() failing for lack of fds or memory: wait this long before trying again.
_ACCEPT_PAUSE_SECONDS = 0.1

# What the current turn of the task loop (tasks.py) was, when a wait in it
# knows: set by accept() and no_task(), read and reset by the loop after the
# turn. A turn that only waited is no task: it is not counted, not timed, and
# does not bring --max-tasks or --refork-after closer.
# Bits; 0 is by far the most common value, and the loop's only test per turn.
TURN_TASK = 0  # nothing said: a task, as every turn used to be
TURN_WAITED = 1  # accept() returned None, or no_task(): a task only with TURN_SERVED
TURN_SERVED = 2  # accept() returned a connection: a task, whatever came after
# `stopping` was set: the loop then reads `stopping` itself, so a bit lost to a
# signal handler running amid a read-modify-write here loses no stop.
TURN_STOP = 4


class Worker:
    """What `worker_start(worker)` receives."""

    def __init__(
        self,
        nr: int,
        master_pid: int,
        master_create_time: float,
        sockets: Sequence[socket.socket],
        scoreboard: Scoreboard,
        app_name: str,
        max_tasks: int | None = None,
        refork_at: int = 0,
        kind: str = "unicornish.worker.tasks",
        settings: Settings | None = None,
    ) -> None:
        self.nr = nr
        self.pid = os.getpid()
        self.master_pid = master_pid
        self.sockets: list[socket.socket] = list(sockets)
        self.log: logging.Logger = log.get_logger(f"worker{nr}")
        self.app: App | None = None
        self.max_tasks = max_tasks
        # After this many tasks the master hears that we are warm (--refork-after).
        self.refork_at = refork_at
        # The app's metrics: updated in shared memory, summed by the master.
        self.metrics: appmetrics.Registry = appmetrics.REGISTRY
        self._master_create_time = master_create_time
        self._board = scoreboard
        self._app_name = app_name
        self._turn: list[int] = [TURN_TASK]  # TURN_*: a list, read by the loop per turn
        self._stopping = False
        # The module of this worker's kind (worker/kinds.py).
        self.kind = kind
        # The settings of this worker's release (HUP makes a new one): what a kind
        # reads beyond the worker's own fields (the HTTP options, --graceful-timeout).
        self.settings = settings if settings is not None else Settings()
        self._quit = False  # QUIT (or the master's death), as opposed to a promotion
        self._promote = False
        self._report_fd = -1
        self._master_gone = False
        self._wake_r = -1
        self._wake_w = -1
        self._poller: select.epoll | None = None
        self._accept_failing = False
        # When the current task started, moved on by its waits in accept() and
        # idle(): the task duration histogram counts work, not waiting. A list
        # because the loop reads it per task (cheaper than an attribute).
        self._task_start: list[float] = [0.0]

    # -- the app's API -------------------------------------------------------

    @property
    def alive(self) -> bool:
        """False once a stop was asked for, or the master is gone."""
        return not self._stopping

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for (or the master is gone, or a promotion)."""
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self._stopping = value
        if value:
            # The task loop tests one thing per turn (tasks.py): this makes it look.
            self._turn[0] |= TURN_STOP

    @property
    def tasks(self) -> int:
        return int(self._board.tasks[0])

    def notify(self) -> None:
        """A heartbeat for long tasks: restarts the --timeout clock."""
        self._board.beat[0] = time.monotonic()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Mark a wait for work as idle, as accept() does for its own wait:

            with worker.idle():
                job = jobs.get(timeout=1.0)   # a queue, a select(), a blocking read

        Inside, the worker shows as `idle` (status, --workers MIN:MAX counts
        it as ready for work) and --timeout does not run; leaving it starts
        the task's clock. A stop request does not interrupt the wait: give it
        a timeout and check `worker.alive`. When the wait got nothing, end the
        turn with `return worker.no_task()`: a turn that only waited is no task.
        """
        board = self._board
        board.state[0] = IDLE
        board.beat[0] = 0.0
        waiting_since = time.monotonic()
        try:
            yield
        finally:
            board.state[0] = BUSY
            board.beat[0] = now = time.monotonic()
            self._task_start[0] += now - waiting_since

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, Any] | None:
        """Wait for a connection on any listener; None on stop, master death or timeout.

        The wait is not timed by --timeout; the task clock starts when a
        connection arrives. A turn of the task loop in which accept() returned
        None, and no earlier call a connection, only waited: it is no task.
        """
        if not self.sockets:
            raise RuntimeError("worker.accept() needs at least one --listen address")
        board = self._board
        board.state[0] = IDLE
        board.beat[0] = 0.0
        poller = self._ensure_poller()
        waiting_since = time.monotonic()
        deadline = None if timeout is None else waiting_since + timeout
        by_fd = {sock.fileno(): sock for sock in self.sockets}
        while not self.stopping:
            wait = _ACCEPT_CHECK_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            events = poller.poll(wait)
            if not events:
                # EPOLLEXCLUSIVE wakes one waiter per connection: should that one
                # exit (QUIT) without taking it, the connection would wait for the
                # next one to arrive. After a quiet while, look at the queues ourselves.
                events = [(fd, select.EPOLLIN) for fd in by_fd]
            for fd, _events in events:
                sock = by_fd.get(fd)
                if sock is None:
                    self._drain_wake()
                    continue
                try:
                    conn, addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another worker got it first
                except OSError as exc:
                    if exc.errno in OUT_OF_RESOURCES:
                        # The connection stays queued and the socket readable: polling
                        # again at once would spin. Wait (a stop request ends the wait).
                        self._accept_paused(exc)
                        break
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    raise
                self._accept_failing = False
                board.state[0] = BUSY
                board.beat[0] = now = time.monotonic()
                self._task_start[0] += now - waiting_since
                self._turn[0] |= TURN_SERVED
                return conn, addr
            if not self.stopping:
                self._check_master()
        board.state[0] = BUSY
        board.beat[0] = now = time.monotonic()
        self._task_start[0] += now - waiting_since
        self._turn[0] |= TURN_WAITED
        return None

    def no_task(self) -> None:
        """This turn of worker_start only waited (in idle(), say) and got
        nothing: it is not counted as a task, nor timed, nor does it bring
        --max-tasks or --refork-after closer. `return worker.no_task()`."""
        self._turn[0] |= TURN_WAITED

    def _accept_paused(self, exc: OSError) -> None:
        if not self._accept_failing:
            self._accept_failing = True
            self.log.error(
                "worker[%d] cannot accept: %s; retrying every %gs",
                self.nr,
                exc.strerror,
                _ACCEPT_PAUSE_SECONDS,
            )
        try:
            select.select([self._wake_r], [], [], _ACCEPT_PAUSE_SECONDS)
        except (OSError, ValueError):
            time.sleep(_ACCEPT_PAUSE_SECONDS)

    def __repr__(self) -> str:
        return f"<Worker nr={self.nr} pid={self.pid} alive={self.alive}>"

    # -- set-up after fork --------------------------------------------------

    def _ensure_poller(self) -> select.epoll:
        if self._poller is None:
            poller = select.epoll()
            for sock in self.sockets:
                sock.setblocking(False)
                # EPOLLEXCLUSIVE: one connection wakes one idle worker, not all.
                poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(self._wake_r, select.EPOLLIN)
            self._poller = poller
        return self._poller

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def _on_quit(self, signum: int, frame: object) -> None:
        # QUIT is also our parent-death signal: tell the two apart by parent.
        if os.getppid() != self.master_pid:
            self._master_gone = True
        self._quit = True
        self.stopping = True
        self._wake()

    def _on_promote(self, signum: int, frame: object) -> None:
        # Ends the current wait (accept, worker.alive) like QUIT; what follows
        # the loop is becoming the mold instead of exiting. Only if the master
        # asked: the kernel sends the same signal for TCP urgent data.
        if not self._board.promote[0]:
            return
        self._promote = True
        self.stopping = True
        self._wake()

    def _on_term(self, signum: int, frame: object) -> None:
        # Quick stop: exit now, as Unicorn's workers do.
        log.flush_stdio()
        os._exit(EXIT_OK)

    def _on_usr1(self, signum: int, frame: object) -> None:
        error = log.reopen(self._log_file)
        if error:
            self.log.error("worker[%d] %s", self.nr, error)

    def install_signals(self, log_file: str | None) -> None:
        self._log_file = log_file
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(PROMOTE_SIGNAL, self._on_promote)
        # Ignored, as Python has it: a write to a closed pipe or socket (the log's
        # reader gone, a client that hung up) is an EPIPE error, never a death.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            faulthandler.register(TRACEBACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
        except (AttributeError, ValueError, OSError, RuntimeError):
            pass  # no usable stderr: the timeout kill still works, without a dump

    def _check_master(self) -> None:
        if os.getppid() != self.master_pid and self._master_is_gone():
            self._master_gone = True
            self._quit = True
            self.stopping = True

    def _master_is_gone(self) -> bool:
        """Confirm with the process table, so a reused pid cannot fool us, nor a
        dead master that its parent has not reaped (a zombie)."""
        return linux.process_is_gone(self.master_pid, self._master_create_time)

    # -- the loop -------------------------------------------------------------

    def wait_for_slot(self, assign_fd: int) -> int | None:
        """A spare waits here, booted, until the master gives it a slot number.

        None when it is asked to stop (QUIT, its master gone, the pipe closed).
        """
        poller = select.poll()
        poller.register(assign_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self.stopping:
            ready = {fd for fd, _events in poller.poll(_ACCEPT_CHECK_SECONDS * 1000)}
            if assign_fd in ready:
                try:
                    data = os.read(assign_fd, 4)
                except OSError:
                    return None
                return decode_slot(data)
            if self._wake_r in ready:
                self._drain_wake()
            else:
                self._check_master()
        return None

    def run(
        self,
        app: App | None,
        app_spec: str,
        config_hooks: dict[str, Callable[..., Any]],
        report_fd: int,
        assign_fd: int | None = None,
        compiled: CompiledApp | None = None,
    ) -> int:
        if assign_fd is None:
            proctitle.set_worker_title(self.nr, self._app_name)
        else:
            proctitle.set_spare_title(self._app_name)
        if self.master_pid != os.getppid():
            # The master died between fork and here; the death signal was set too late.
            self._master_gone = True
            self._quit = True
            self.stopping = True
        kind = kind_module(self.kind)
        if app is None:
            try:
                app = kind.load(app_spec, compiled)
            except AppError as exc:
                what = f"worker[{self.nr}]" if assign_fd is None else "spare"
                self.log.error("%s cannot load app: %s", what, exc)
                return EXIT_BOOT_FAILED
        if assign_fd is not None:
            nr = self.wait_for_slot(assign_fd)
            os.close(assign_fd)
            if nr is None:
                return EXIT_OK
            self.nr = nr
            self.log = log.get_logger(f"worker{nr}")
            proctitle.set_worker_title(nr, self._app_name)
        self.app = app
        for hook in _hooks(config_hooks, app.hooks, "after_fork"):
            try:
                hook(self)
            except BaseException:  # noqa: BLE001 - report the user's error, then stop
                self.log.exception("worker[%d] after_fork failed", self.nr)
                return EXIT_BOOT_FAILED
        self._report_fd = report_fd
        code = kind.serve(self, app, self._ready)
        self._board.beat[0] = 0.0  # the last task is over: worker_exit is not timed
        if code == EXIT_OK and self._promote and not self._quit:
            return BECAME_MOLD
        if code == EXIT_OK:
            self._exit_cleanly(_hooks(config_hooks, app.hooks, "worker_exit"))
        return code

    def _ready(self) -> None:
        self.log.info(
            "worker[%d] ready", self.nr, extra=log.event("worker_ready", pid=self.pid, nr=self.nr)
        )
        self._report(REPORT_READY)

    # -- for the worker kinds (kinds.py) ---------------------------------------

    @property
    def board(self) -> Scoreboard:
        """This worker's scoreboard page: heartbeat, state, task count, durations."""
        return self._board

    @property
    def task_start(self) -> list[float]:
        """When the current task started (one item, mutable, for a kind's hot loop)."""
        return self._task_start

    @property
    def turn(self) -> list[int]:
        """What the current turn was (TURN_* bits; one item, mutable, for the task
        loop, which resets it to TURN_TASK after each turn that set any)."""
        return self._turn

    def report(self, event: int) -> None:
        """Tell the master something (protocol.REPORT_*) over the report pipe."""
        self._report(event)

    def task_started(self) -> float:
        """A unit of work begins: busy, and --timeout runs from now."""
        board = self._board
        board.state[0] = BUSY
        board.beat[0] = self._task_start[0] = now = time.monotonic()
        return now

    def task_done(self, took: float | None = None, unit: str = "tasks") -> bool:
        """A unit of work ended: count it, time it, say warm at --refork-after.
        `took`: its duration, where the kind times each unit itself (an event
        loop has many in flight); else since task_started(). True when
        --max-tasks is reached: take no more work."""
        board = self._board
        done = int(board.tasks[0]) + 1
        board.tasks[0] = done
        if board.record_durations:
            if took is None:
                took = time.monotonic() - self._task_start[0]
            board.durations[bisect.bisect_left(TASK_DURATION_BUCKETS, took)] += 1.0
            board.duration_sum[0] += took
        if done == self.refork_at:
            self._report(REPORT_WARM)
        if self.max_tasks and done >= self.max_tasks:
            if done == self.max_tasks:
                self.log.info("worker[%d] reached --max-tasks after %d %s", self.nr, done, unit)
            return True
        return False

    def _report(self, event: int) -> None:
        try:
            os.write(self._report_fd, encode_report(self.pid, event))
        except OSError:
            pass

    # -- for the mold (mold.py) ----------------------------------------------

    @property
    def app_name(self) -> str:
        return self._app_name

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    @property
    def quitting(self) -> bool:
        """QUIT came, or the master is gone: a mold stops too."""
        return self._quit or self._master_gone

    def drain_wake(self) -> None:
        self._drain_wake()

    def check_master(self) -> None:
        self._check_master()

    def become_mold(self) -> None:
        self._board.state[0] = MOLD
        self._board.beat[0] = 0.0
        self.stopping = False

    def sibling(self, nr: int, board: Scoreboard, max_tasks: int | None, refork_at: int) -> Worker:
        """The worker object of a process this mold forks for slot `nr`."""
        return Worker(
            nr,
            self.master_pid,
            self._master_create_time,
            self.sockets,
            board,
            self._app_name,
            max_tasks,
            refork_at,
            self.kind,
            self.settings,
        )

    def forget(self) -> None:
        """In a process forked from this one (a mold's child): let go of our
        wake-up pipe and poller, which belong to the mold."""
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._poller is not None:
            self._poller.close()

    def _exit_cleanly(self, hooks: list[Callable[..., Any]]) -> None:
        if self._master_gone:
            self.log.info("worker[%d] master pid=%d is gone", self.nr, self.master_pid)
        for hook in hooks:
            try:
                hook(self)
            except BaseException:  # noqa: BLE001
                self.log.exception("worker[%d] worker_exit failed", self.nr)
        self.log.info(
            "worker[%d] exited", self.nr, extra=log.event("worker_exited", pid=self.pid, nr=self.nr)
        )


def next_mark(done: int, *marks: int) -> int:
    """The nearest task count above `done` among the marks (0: none)."""
    ahead = [m for m in marks if m > done]
    return min(ahead) if ahead else 0


def _hooks(
    config_hooks: dict[str, Callable[..., Any]], app_hooks: dict[str, Callable[..., Any]], name: str
) -> list[Callable[..., Any]]:
    """The config file's hook runs first, then the app's."""
    return [h for h in (config_hooks.get(name), app_hooks.get(name)) if h is not None]
