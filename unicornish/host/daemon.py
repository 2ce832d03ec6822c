"""-D/--daemonize: run in the background, but say truthfully whether the start worked.

The command that was launched forks; the child starts a new session and forks
again, and that grandchild becomes the master (detached from the terminal,
stdin on /dev/null, stdout and stderr on --log-file). The launching process
waits on a pipe until the master says it is ready (all wanted workers ready:
the moment systemd's READY=1 is sent), then exits 0. Any start-up error
(the app, the pid file, the listeners, a worker that cannot boot) comes back
through the same pipe: the launcher prints it and exits 1 once the master
is gone (the pipe closes when it exits), so a failed start leaves nothing
running. A master that exits before it is ready closes the pipe too.

Not done on a USR2 re-exec: the new master is already in the background,
and the old master watches its pid (as Unicorn does).
"""

from __future__ import annotations

import os
import select
import sys
import time

from unicornish.host import log

READY_TIMEOUT = 60.0
_READY = b"READY "


def daemonize() -> int:
    """In the launcher: wait for the master's word, then exit. In the master:
    return the fd on which to say it is ready (or why it failed)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    _flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        code = _launcher(read_fd, pid)
        _flush()
        os._exit(code)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    log.follow_stdout()
    return write_fd


def _launcher(read_fd: int, child: int) -> int:
    try:
        os.waitpid(child, 0)  # the intermediate child exits at once
    except ChildProcessError:
        pass
    deadline = time.monotonic() + READY_TIMEOUT
    pending = b""
    said_why = False
    master_pid = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _err(
                f"unicornish: error: master{master_pid} not ready after {READY_TIMEOUT:g}s; "
                "it is still starting (see its log)\n"
            )
            return 1
        readable, _, _ = select.select([read_fd], [], [], remaining)
        if not readable:
            continue
        data = os.read(read_fd, 4096)
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, _sep, pending = pending.partition(b"\n")
            if line.startswith(_READY):
                return 0
            if line.startswith(b"PID "):
                master_pid = f" pid={line[4:].decode(errors='replace')}"
                continue
            _err(line.decode("utf-8", "replace") + "\n")
            said_why = True
    if pending:
        _err(pending.decode("utf-8", "replace") + "\n")
        said_why = True
    if not said_why:
        _err("unicornish: error: the master exited before it was ready (see its log)\n")
    return 1


def notify_ready(fd: int, pid: int) -> None:
    _write_and_close(fd, f"READY {pid}\n")


def report(fd: int, message: str) -> None:
    """Tell the launcher why the start failed (it prints this, and exits 1 at EOF)."""
    try:
        os.write(fd, f"unicornish: error: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _write_and_close(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


def _err(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
