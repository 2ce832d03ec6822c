"""The mold: a warmed-up worker that new workers are forked from (--refork-after).

A worker that has run for a while holds what the app built after start:
lazily imported modules, caches, compiled templates. Forked from it, a new
worker shares those pages with it (copy-on-write) and starts warm. The mold
is promoted from a worker by the master (PROMOTE_SIGNAL), runs `after_mold`,
collects and freezes its heap (so that no collection in a child writes to the
shared pages), connects to the master's mold socket and forks on request.

The master stays the only supervisor: the mold forks twice and the middle
process exits at once, so the new worker is reparented to the master (a
child subreaper), which reaps, signals and times it like any of its own. It runs
nothing before the master has its pid (the adoption pipe, `MoldLink.fork`).
Its heartbeat page and metrics arena are the master's memfds, handed over
with the request (SCM_RIGHTS): a fork from the mold could not share them.

This is the worker's side (`run`, and `serve` once it is the mold) and the
socket's wire format, which the master's end (master/moldlink.py) imports.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NoReturn

from unicornish.app import App, CompiledApp
from unicornish.host import linux, log
from unicornish.host import titles as proctitle
from unicornish.metrics import appmetrics
from unicornish.protocol import BECAME_MOLD, EXIT_BOOT_FAILED, EXIT_OK, PROMOTE_SIGNAL
from unicornish.scoreboard import Scoreboard
from unicornish.worker.process import Worker

# master -> mold: slot, --max-tasks limit, --refork-after mark; with the fds of
# the heartbeat page, the metrics arena, the adoption pipe and, for a spare,
# its slot pipe.
REQUEST = struct.Struct("=iqq")
# mold -> master: the new worker's pid, or -errno. The same on the adoption pipe,
# master -> new worker: the pid the master recorded.
REPLY = struct.Struct("=i")
# The master waits this long for a mold's answer before it gives up on it.
FORK_WAIT = 2.0
# A mold's child waits this long to be reparented to the master.
REPARENT_WAIT = 5.0
# The signals a worker handles: blocked from the fork until the child has its own handlers.
WORKER_SIGNALS = (
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGUSR1,
    PROMOTE_SIGNAL,
)


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


# -- the mold's end -----------------------------------------------------------------


def run(
    worker: Worker,
    app: App | None,
    app_spec: str,
    config_hooks: dict[str, Callable[..., Any]],
    report_fd: int,
    assign_fd: int | None,
    compiled: CompiledApp | None,
    log_file: str | None,
    mold_address: str,
) -> int:
    """A worker's life: its loop, and if it is promoted, the mold's."""
    code = worker.run(app, app_spec, config_hooks, report_fd, assign_fd, compiled)
    if code != BECAME_MOLD:
        return code
    return Mold(worker, app_spec, config_hooks, report_fd, log_file, mold_address).serve()


class Mold:
    def __init__(
        self,
        worker: Worker,
        app_spec: str,
        config_hooks: dict[str, Callable[..., Any]],
        report_fd: int,
        log_file: str | None,
        address: str,
    ) -> None:
        assert worker.app is not None
        self.worker = worker
        self.app: App = worker.app
        self.app_spec = app_spec
        self.config_hooks = config_hooks
        self.report_fd = report_fd
        self.log_file = log_file
        self.address = address
        self.log: logging.Logger = worker.log
        self.sock: socket.socket | None = None

    def serve(self) -> int:
        worker = self.worker
        worker.become_mold()
        proctitle.set_mold_title(worker.app_name)
        for hook in [
            h for h in (self.config_hooks.get("after_mold"), self.app.hooks.get("after_mold")) if h
        ]:
            try:
                hook(worker)
            except BaseException:  # noqa: BLE001 - report the user's error; the master falls back
                self.log.exception("mold pid=%d after_mold failed", worker.pid)
                return EXIT_BOOT_FAILED
        # What the children share must stay as it is: a collection in a child
        # would write to every object it visits (its reference counts, its GC
        # links) and copy the page. Frozen objects are never visited.
        gc.collect()
        gc.freeze()
        try:
            self.sock = self.connect()
        except OSError as exc:
            self.log.error("mold pid=%d cannot reach the master: %s", worker.pid, exc)
            return EXIT_BOOT_FAILED
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(worker.wake_fd, select.POLLIN)
        while not worker.quitting:
            ready = {fd for fd, _ in poller.poll(1000)}
            if worker.wake_fd in ready:
                worker.drain_wake()
            if self.sock.fileno() in ready and not self.answer():
                break  # the master closed our socket: retired
            if not ready:
                worker.check_master()
        self.sock.close()
        self.log.info("mold pid=%d exited", worker.pid)
        return EXIT_OK

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(FORK_WAIT)
        sock.connect(self.address)
        if peer_pid(sock) != self.worker.master_pid:
            sock.close()
            raise OSError("the mold socket is not our master's")
        sock.settimeout(None)
        return sock

    def answer(self) -> bool:
        """One fork request; False when the master closed the socket."""
        assert self.sock is not None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, REQUEST.size, 4)
        except OSError:
            return False
        if len(data) < REQUEST.size:
            for fd in fds:
                os.close(fd)
            return False
        nr, max_tasks, refork_at = REQUEST.unpack(data)
        try:
            pid = self.fork_worker(nr, max_tasks or None, refork_at, fds)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            self.sock.sendall(REPLY.pack(pid))
        except OSError:
            return False
        return True

    def fork_worker(self, nr: int, max_tasks: int | None, refork_at: int, fds: list[int]) -> int:
        """Fork twice: the middle process exits at once, and the new worker is
        reparented to the master. Returns its pid, or -errno."""
        if len(fds) < 3:
            return -22  # EINVAL: no heartbeat page, arena or adoption pipe
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            middle = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_fd)
            os.close(write_fd)
            return -(exc.errno or 11)
        if middle == 0:
            try:
                os.close(read_fd)
                pid = os.fork()
                if pid == 0:
                    os.close(write_fd)
                    run_in_child(  # never returns
                        lambda: self.worker_life(nr, max_tasks, refork_at, fds, mask),
                        self.log,
                        lambda: f"worker[{nr}]",
                    )
                os.write(write_fd, REPLY.pack(pid))
            finally:
                os._exit(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        try:
            data = os.read(read_fd, REPLY.size)
        finally:
            os.close(read_fd)
            os.waitpid(middle, 0)
        if len(data) != REPLY.size:
            return -11  # EAGAIN: the second fork failed
        return int(REPLY.unpack(data)[0])

    def worker_life(
        self,
        nr: int,
        max_tasks: int | None,
        refork_at: int,
        fds: list[int],
        mask: set[int | signal.Signals],
    ) -> int:
        """In the mold's grandchild: wait to be the master's, then run as a worker."""
        mold = self.worker
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        if self.sock is not None:
            self.sock.close()
        mold.forget()
        if not adopted(fds[2]):
            mold.log.info(
                "worker[%d] pid=%d exits: the master never learnt its pid "
                "(the mold died or hung while it forked it)",
                nr,
                os.getpid(),
            )
            return EXIT_OK
        if not wait_for_master(mold.master_pid):
            mold.log.info("worker[%d] master pid=%d is gone", nr, mold.master_pid)
            return EXIT_OK
        # Only now: set while the middle process lived, it would fire at its exit.
        linux.set_parent_death_signal(signal.SIGQUIT)
        if os.getppid() != mold.master_pid:
            return EXIT_OK
        board = Scoreboard(fds[0])
        arena = appmetrics.Arena(fds[1])
        assign_fd = os.dup(fds[3]) if len(fds) > 3 else None
        for fd in fds:
            os.close(fd)
        appmetrics.REGISTRY.bind(arena)
        worker = mold.sibling(nr, board, max_tasks, refork_at)
        worker.install_signals(self.log_file)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return run(
            worker,
            self.app,
            self.app_spec,
            self.config_hooks,
            self.report_fd,
            assign_fd,
            None,
            self.log_file,
            self.address,
        )


def run_in_child(
    life: Callable[[], int], logger: logging.Logger, label: Callable[[], str]
) -> NoReturn:
    """In a forked child: run `life` and exit with its code. Whatever happens,
    the child never returns into its parent's code (the master's loop, the
    mold's), not even on an exception or sys.exit()."""
    code = 1
    try:
        code = life()
    except BaseException:  # noqa: BLE001 - logged, then the exit below
        try:
            logger.exception("%s failed", label())  # a spare's slot is known by then
        except BaseException:  # noqa: BLE001
            pass
    finally:
        log.flush_stdio()
        os._exit(code)


def adopted(fd: int) -> bool:
    """Whether the master has our pid: it writes it on the adoption pipe once
    the mold's answer came, and closes the pipe unwritten when it never will
    (EOF here; the kernel closes it too if the master dies)."""
    # The master holds the pipe no longer than FORK_WAIT after its request:
    # past that (a master stopped in mid-fork), it has given up on us.
    deadline = time.monotonic() + FORK_WAIT + REPARENT_WAIT
    data = b""
    while len(data) < REPLY.size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return False
        chunk = os.read(fd, REPLY.size - len(data))
        if not chunk:
            return False
        data += chunk
    return int(REPLY.unpack(data)[0]) == os.getpid()


def wait_for_master(master_pid: int) -> bool:
    """Until the middle process has exited and we are the master's child."""
    parent = os.getppid()
    if parent == master_pid:
        return True
    try:
        pidfd = os.pidfd_open(parent)
    except OSError:
        pidfd = -1  # gone already
    if pidfd >= 0:
        try:
            select.select([pidfd], [], [], REPARENT_WAIT)  # readable when it exits
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + REPARENT_WAIT
    # The exit and the reparenting are one step of the kernel's, but getppid may
    # lag the pidfd by an instant on another CPU.
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.0005)
    return os.getppid() == master_pid
