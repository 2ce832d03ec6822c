"""USR2: start a new master that inherits the listeners, Unicorn's way.

The old master forks a child that execs the same command line in the same
directory, with the listening sockets' descriptors in UNICORNISH_FD. The pid
file becomes FILE.oldbin; the new master writes FILE. If the new master dies,
the old one puts FILE back and carries on.

Under systemd (NOTIFY_SOCKET set) the new master also takes over: once its
workers are ready it tells systemd `MAINPID=<its pid>` and `READY=1`, waits
until systemd has read that (BARRIER=1), then sends QUIT to the old master,
which finishes its requests and exits without a word to systemd. Until then
the old master is the main process and keeps serving, so a new version that
never gets ready leaves the old one in charge.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Protocol

from unicornish.host import listeners as listeners_module
from unicornish.host import pidfile
from unicornish.host.listeners import FD_ENV, SYSTEMD_FD_ENV
from unicornish.host.systemd import Notifier, monotonic_usec
from unicornish.master.autoscale import parse_handover
from unicornish.master.state import View
from unicornish.protocol import HANDLED_SIGNALS, METRICS_FD_ENV

__all__ = ["COUNT_ENV", "FD_ENV", "OLD_MASTER_ENV", "Upgrade", "handed_count"]

OLD_MASTER_ENV = "UNICORNISH_OLD_MASTER"
# The worker count (and bounds) the old master had, handed over as the
# listeners are: TTIN, TTOU and `ctl scale` met a load that is still there.
COUNT_ENV = "UNICORNISH_WORKERS"


def command_line() -> list[str]:
    """The command that started this master, to run it again."""
    return [sys.executable, "-m", "unicornish", *sys.argv[1:]]


def working_directory() -> str:
    """Prefer $PWD when it is this directory: a symlinked deploy dir resolves anew."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD", "")
    try:
        if pwd and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return cwd


# Taken at start, as Unicorn does: by USR2 time `current` may point to the next
# release, and that is exactly where the new master must start (not where we run).
START_DIRECTORY = working_directory()


def old_master_from_env() -> int | None:
    """The pid of the master that started us by USR2 (it is our parent), or None."""
    text = os.environ.pop(OLD_MASTER_ENV, "")
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid == os.getppid() else None


def handed_count(log: logging.Logger) -> tuple[int, tuple[int, int] | None, int] | None:
    """The count, bounds and pid of the old master that started us by USR2, or
    None. Read once, at start (workers must not see it): only from our parent,
    so a variable left in an environment by hand is never taken for one."""
    text = os.environ.pop(COUNT_ENV, None)
    old = os.environ.get(OLD_MASTER_ENV, "")
    if text is None or not old.isdigit() or int(old) != os.getppid():
        return None
    try:
        wanted, bounds = parse_handover(text)
    except ValueError:
        log.warning(
            "%s=%r from old master pid=%s ignored: not a worker count", COUNT_ENV, text, old
        )
        return None
    return wanted, bounds, int(old)


class SocketFile(Protocol):
    """The control socket's file, moved aside while a new master binds its path."""

    def move_aside(self) -> None: ...

    def move_back(self) -> None: ...


class Upgrade:
    """USR2 and `ctl upgrade` in the old master; the hand-over in the new one."""

    def __init__(
        self,
        log: logging.Logger,
        notifier: Notifier,
        listeners: list[socket.socket],
        view: View,
        status_line: Callable[[], str],
        set_title: Callable[[bool], None],
        before_exec: Callable[[], None],
    ) -> None:
        self.log = log
        self.notifier = notifier
        self.listeners = listeners
        self.view = view
        self.status_line = status_line
        self.set_title = set_title
        self.before_exec = before_exec
        self.control: SocketFile | None = None
        # --metrics: the socket the new master inherits (it accepts on it from
        # then on: the port is never closed, and never busy for the new master).
        self.metrics: SocketFile | None = None
        self.metrics_fd: int | None = None
        # The count to hand to the new master (autoscale.handover), or None.
        self.hand_over: Callable[[], str | None] = lambda: None
        # Told "started", "refused" or "failed" for each USR2 (the metrics count them).
        self.on_result: Callable[[str], None] = lambda result: None
        self.my_pid = os.getpid()
        self.pid: int | None = None  # the new master we started, while it runs
        self.is_old = False  # replaced: a new master runs beside us
        # Set in a master started by USR2: the old master (our parent) and
        # whether this one has finished that upgrade (take_over).
        self.old_master_pid = old_master_from_env()
        self.took_over = False

    def predecessor_alive(self) -> bool:
        """True while the old master that started this one still runs (it is our parent)."""
        old = self.old_master_pid
        return old is not None and os.getppid() == old

    def refusal(self, stopping: bool) -> str | None:
        """Why an upgrade cannot start now, in the same words for USR2 and `ctl`."""
        if stopping:
            return "master is stopping"
        if self.pid is not None:
            return f"new master pid={self.pid} is still running"
        if self.is_old:
            return "this master was already replaced by a new one"
        if self.predecessor_alive():
            # Unicorn refuses this too: FILE.oldbin would be overwritten, and the
            # first master would serve on beside the third.
            return (
                f"old master pid={self.old_master_pid} still runs; "
                "QUIT it (or back out) before upgrading again"
            )
        return None

    def start(self, why: str, stopping: bool) -> tuple[int | None, str | None]:
        """Fork and exec a new master; (its pid, None) or (None, why not)."""
        reason = self.refusal(stopping)
        if reason is not None:
            self.log.warning("%s ignored: %s", why, reason)
            self.on_result("refused")
            return None, reason
        path = self.view.settings.pid
        if path and pidfile.read_pid(path) == self.my_pid:
            try:
                os.rename(path, path + ".oldbin")
            except OSError as exc:
                self.log.error("%s failed: cannot rename pid file %s: %s", why, path, exc.strerror)
                return None, f"cannot rename pid file {path}: {exc.strerror}"
        if self.control is not None:
            self.control.move_aside()  # PATH -> PATH.oldbin: the new master binds PATH
        if self.metrics is not None:
            self.metrics.move_aside()  # the new master accepts on it
        self.before_exec()
        pid = self._fork_exec(why)
        if pid is None:
            self._restore_pid_file()
            self._move_back()
            self.notifier.send("READY=1", self.status_line())
            self.on_result("failed")
            return None, "fork failed; see the master's log"
        self.pid = pid
        self.is_old = True
        # From now on the new master may become systemd's main process at any time:
        # nothing but watchdog pings from us, STOPPING=1 above all.
        self.notifier.quiet = True
        self.set_title(True)
        self.on_result("started")
        return pid, None

    def _move_back(self) -> None:
        if self.control is not None:
            self.control.move_back()
        if self.metrics is not None:
            self.metrics.move_back()

    def _fork_exec(self, why: str) -> int | None:
        fds = [sock.fileno() for sock in self.listeners]
        env = dict(os.environ)
        env[FD_ENV] = ",".join(str(fd) for fd in fds)
        env[SYSTEMD_FD_ENV] = ",".join(
            str(fd) for fd in listeners_module.systemd_fds(self.listeners)
        )
        env[OLD_MASTER_ENV] = str(self.my_pid)
        count = self.hand_over()
        env.pop(COUNT_ENV, None)
        if count is not None:
            env[COUNT_ENV] = count
        env.pop(METRICS_FD_ENV, None)
        inherit = list(fds)
        if self.metrics_fd is not None:
            env[METRICS_FD_ENV] = str(self.metrics_fd)
            inherit.append(self.metrics_fd)
        argv = command_line()
        cwd = START_DIRECTORY
        env["PWD"] = cwd
        # Before the fork: systemd must see RELOADING=1 before the new master's MAINPID=.
        self.notifier.send("RELOADING=1", monotonic_usec(), "STATUS=USR2: starting a new master")
        # Signals wait (blocked) across the fork: one caught by the child before
        # exec would land in our wake-up pipe, as if sent to us.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.log.error("%s failed: fork: %s", why, exc.strerror)
            return None
        if pid == 0:
            _exec_new_master(argv, env, cwd, inherit, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.log.info("USR2: started new master pid=%d: %s", pid, " ".join(argv))
        if count is not None:
            self.log.info("USR2: handing the worker count to the new master: %s", count)
        return pid

    def _restore_pid_file(self) -> None:
        path = self.view.settings.pid
        if not path:
            return
        old = path + ".oldbin"
        if pidfile.read_pid(old) == self.my_pid:
            current = pidfile.read_pid(path)
            if current is None or not pidfile.is_unicornish_master(current):
                try:
                    os.rename(old, path)
                except OSError as exc:
                    self.log.error("cannot restore pid file %s: %s", path, exc.strerror)

    def exited(self, text: str, stopping: bool) -> None:
        """The new master we started is gone: take the pid file and the socket back."""
        pid = self.pid
        self.pid = None
        self.is_old = False
        self._restore_pid_file()
        self._move_back()
        if stopping:
            # Stopping already (the new master took over, or we were told to quit):
            # stay quiet towards systemd, and let the stop finish.
            self.log.info("new master pid=%d exited (%s)", pid, text)
            return
        self.log.error("new master pid=%d exited (%s); this master carries on", pid, text)
        self.on_result("failed")
        self.set_title(False)
        self.notifier.quiet = False
        self.notifier.send("READY=1", self.status_line())

    def announce_ready(self, lines: list[str]) -> None:
        """Our workers are ready: say so, and in a new master finish the upgrade.

        Under systemd, become the main process and stop the old master; without
        it, the operator decides (QUIT the old master, or WINCH/HUP it to back out).
        """
        if self.old_master_pid is None or self.took_over:
            self.notifier.send(*lines)
            return
        old = self.old_master_pid
        self.took_over = True
        if not self.notifier.enabled:
            self.notifier.send(*lines)
            if self.predecessor_alive():
                self.log.info(
                    "old master pid=%d still runs: send it QUIT to finish the upgrade", old
                )
            return
        self.notifier.send(f"MAINPID={self.my_pid}", *lines)
        if not self.notifier.barrier():
            self.log.warning("systemd did not confirm MAINPID=%d in time; going on", self.my_pid)
        if not self.predecessor_alive() or not pidfile.is_unicornish_master(old):
            return
        self.log.info("now systemd's main process; sending QUIT to old master pid=%d", old)
        try:
            os.kill(old, signal.SIGQUIT)
        except OSError as exc:
            self.log.error("cannot signal old master pid=%d: %s", old, exc.strerror)


def _exec_new_master(
    argv: list[str], env: dict[str, str], cwd: str, fds: list[int], mask: set[int | signal.Signals]
) -> None:
    """In the forked child: become the new master, or report and leave."""
    try:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:  # what exec would do; then a signal for the
            signal.signal(signum, signal.SIG_DFL)  # new pid is the new master's
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # exec keeps the mask
        for fd in fds:
            os.set_inheritable(fd, True)
        if "WATCHDOG_PID" in env:
            env["WATCHDOG_PID"] = str(os.getpid())  # the watchdog follows the main pid
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - report and leave, never return to the loop
        try:
            os.write(2, f"unicornish: re-exec failed: {exc}\n".encode())
        except OSError:
            pass
    os._exit(1)
