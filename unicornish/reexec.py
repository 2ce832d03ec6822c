"""USR2: start a new master that inherits the listeners, Unicorn's way.

The old master forks a child that execs the same command line in the same
directory, with the listening sockets' descriptors in UNICORNISH_FD. The pid
file becomes FILE.oldbin; the new master writes FILE. If the new master dies,
the old one puts FILE back and carries on.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from unicornish import pidfile, proctitle

if TYPE_CHECKING:
    from unicornish.master import Master

FD_ENV = "UNICORNISH_FD"
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
    for hook in master.hooks("before_exec"):
        try:
            hook(master)
        except Exception:  # noqa: BLE001 - the user's hook must not kill the master
            log.exception("before_exec failed")
    fds = [sock.fileno() for sock in master.listeners]
    env = dict(os.environ)
    env[FD_ENV] = ",".join(str(fd) for fd in fds)
    env[OLD_MASTER_ENV] = str(master.pid)
    argv = command_line()
    cwd = working_directory()
    env["PWD"] = cwd
    try:
        pid = os.fork()
    except OSError as exc:
        log.error("USR2 failed: fork: %s", exc.strerror)
        _restore_pid_file(master)
        return
    if pid == 0:
        try:
            import signal

            signal.set_wakeup_fd(-1)
            for fd in fds:
                os.set_inheritable(fd, True)
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - report and leave, never return to the loop
            try:
                os.write(2, f"unicornish: re-exec failed: {exc}\n".encode())
            except OSError:
                pass
        os._exit(1)
    master.reexec_pid = pid
    master.is_old = True
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
    master.log.error(
        "new master pid=%d exited (%s); this master carries on", master.reexec_pid, text
    )
    master.reexec_pid = None
    master.is_old = False
    _restore_pid_file(master)
    proctitle.set_master_title(master.app_name)
