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

import os
import signal
import sys
from typing import TYPE_CHECKING

from unicornish import listeners as listeners_module
from unicornish import pidfile, proctitle
from unicornish.listeners import FD_ENV, SYSTEMD_FD_ENV
from unicornish.systemd import monotonic_usec

if TYPE_CHECKING:
    from unicornish.master import Master

__all__ = ["FD_ENV", "OLD_MASTER_ENV", "start_new_master", "new_master_exited", "take_over"]

OLD_MASTER_ENV = "UNICORNISH_OLD_MASTER"


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


def predecessor_alive(master: Master) -> bool:
    """True while the old master that started this one still runs (it is our parent)."""
    old = master.old_master_pid
    return old is not None and os.getppid() == old


def start_new_master(master: Master) -> None:
    log = master.log
    if master.stopping:
        log.info("USR2 ignored: master is stopping")
        return
    if master.reexec_pid is not None:
        log.warning("USR2 ignored: new master pid=%d is still running", master.reexec_pid)
        return
    if master.is_old:
        log.warning("USR2 ignored: this master was already replaced by a new one")
        return
    path = master.settings.pid
    if path:
        if pidfile.read_pid(path) == master.pid:
            try:
                os.rename(path, path + ".oldbin")
            except OSError as exc:
                log.error("USR2 failed: cannot rename pid file %s: %s", path, exc.strerror)
                return
    if master.control is not None:
        master.control.move_aside()  # PATH -> PATH.oldbin: the new master binds PATH
    for hook in master.hooks("before_exec"):
        try:
            hook(master)
        except BaseException:  # noqa: BLE001 - not even sys.exit() in the hook kills the master
            log.exception("before_exec failed")
    fds = [sock.fileno() for sock in master.listeners]
    env = dict(os.environ)
    env[FD_ENV] = ",".join(str(fd) for fd in fds)
    env[SYSTEMD_FD_ENV] = ",".join(str(fd) for fd in listeners_module.systemd_fds(master.listeners))
    env[OLD_MASTER_ENV] = str(master.pid)
    argv = command_line()
    cwd = START_DIRECTORY
    env["PWD"] = cwd
    # Before the fork: systemd must see RELOADING=1 before the new master's MAINPID=.
    master.notifier.send("RELOADING=1", monotonic_usec(), "STATUS=USR2: starting a new master")
    from unicornish.master import HANDLED_SIGNALS

    # Signals wait (blocked) across the fork: one caught by the child before
    # exec would land in our wake-up pipe, as if sent to us.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.error("USR2 failed: fork: %s", exc.strerror)
        _restore_pid_file(master)
        if master.control is not None:
            master.control.move_back()
        master.notifier.send("READY=1", master.status_line())
        return
    if pid == 0:
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
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    master.reexec_pid = pid
    master.is_old = True
    # From now on the new master may become systemd's main process at any time:
    # nothing but watchdog pings from us, STOPPING=1 above all.
    master.notifier.quiet = True
    proctitle.set_master_title(master.app_name, old=True)
    log.info("USR2: started new master pid=%d: %s", pid, " ".join(argv))


def _restore_pid_file(master: Master) -> None:
    path = master.settings.pid
    if not path:
        return
    old = path + ".oldbin"
    if pidfile.read_pid(old) == master.pid:
        current = pidfile.read_pid(path)
        if current is None or not pidfile.is_unicornish_master(current):
            try:
                os.rename(old, path)
            except OSError as exc:
                master.log.error("cannot restore pid file %s: %s", path, exc.strerror)


def new_master_exited(master: Master, text: str) -> None:
    pid = master.reexec_pid
    master.reexec_pid = None
    master.is_old = False
    _restore_pid_file(master)
    if master.control is not None:
        master.control.move_back()
    if master.stopping:
        # Stopping already (the new master took over, or we were told to quit):
        # stay quiet towards systemd, and let the stop finish.
        master.log.info("new master pid=%d exited (%s)", pid, text)
        return
    master.log.error("new master pid=%d exited (%s); this master carries on", pid, text)
    proctitle.set_master_title(master.app_name)
    master.notifier.quiet = False
    master.notifier.send("READY=1", master.status_line())


def take_over(master: Master, lines: list[str]) -> None:
    """The new master's workers are ready: finish the upgrade that started it.

    Under systemd, become the main process and stop the old master; without
    it, the operator decides (QUIT the old master, or WINCH/HUP it to back out).
    """
    old = master.old_master_pid
    master.took_over = True
    if not master.notifier.enabled:
        master.notifier.send(*lines)
        if predecessor_alive(master):
            master.log.info("old master pid=%d still runs: send it QUIT to finish the upgrade", old)
        return
    master.notifier.send(f"MAINPID={master.pid}", *lines)
    if not master.notifier.barrier():
        master.log.warning("systemd did not confirm MAINPID=%d in time; going on", master.pid)
    if old is None or not predecessor_alive(master) or not pidfile.is_unicornish_master(old):
        return
    master.log.info("now systemd's main process; sending QUIT to old master pid=%d", old)
    try:
        os.kill(old, signal.SIGQUIT)
    except OSError as exc:
        master.log.error("cannot signal old master pid=%d: %s", old, exc.strerror)
