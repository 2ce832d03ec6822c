"""The master's end of the mold socket (--refork-after): asking a mold for a worker.

The mold's end, and the wire format both ends use, are in worker/mold.py.
"""

from __future__ import annotations

import os
import socket

from unicornish.worker.mold import FORK_WAIT, REPLY, REQUEST


class MoldError(Exception):
    """The mold cannot fork (dead, hung, or fork failed): fork from the master."""


def new_address(master_pid: int) -> str:
    """Where a promoted worker finds its master: an abstract unix socket (no
    file to clean up), with a random part so no other process can guess it."""
    return f"\0unicornish-mold-{master_pid}-{os.urandom(8).hex()}"


class MoldLink:
    """The master's connection to one mold."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.usable = True  # False once it failed, died or was retired
        self.forks = 0  # workers it forked for the master
        sock.setblocking(True)
        sock.settimeout(FORK_WAIT)

    def fork(self, nr: int, max_tasks: int | None, refork_at: int, fds: list[int]) -> int:
        """The pid of a new worker forked by the mold; raises MoldError. `fds`:
        its heartbeat page, its metrics arena and, for a spare, its slot pipe.

        The new worker runs nothing before the master has its pid: the mold
        may die (or hang) after it forked and before it answered, and the
        worker, reparented here all the same, would serve outside every
        record. So it waits on a pipe of the master's own (the adoption pipe),
        for its pid, written only once the answer came; when none came, the
        pipe is closed unwritten and the worker exits."""
        adopt_read, adopt_write = os.pipe2(os.O_CLOEXEC)
        try:
            sent = [fds[0], fds[1], adopt_read, *fds[2:]]
            try:
                socket.send_fds(self.sock, [REQUEST.pack(nr, max_tasks or 0, refork_at)], sent)
                data = b""
                while len(data) < REPLY.size:
                    chunk = self.sock.recv(REPLY.size - len(data))
                    if not chunk:
                        raise MoldError("it closed its socket")
                    data += chunk
            except TimeoutError:
                raise MoldError(f"no answer in {FORK_WAIT:g}s") from None
            except OSError as exc:
                raise MoldError(exc.strerror or str(exc)) from None
            (pid,) = REPLY.unpack(data)
            if pid <= 0:
                raise MoldError(f"fork failed: {os.strerror(-pid) if pid else 'no pid'}")
            try:
                os.write(adopt_write, REPLY.pack(pid))
            except OSError:
                pass  # it died already (the pipe has no reader): reaped as ours all the same
        finally:
            # Closed before anything else is forked here: no other process may
            # hold the write end, or a worker we never heard of would not see EOF.
            os.close(adopt_read)
            os.close(adopt_write)
        self.forks += 1
        return pid

    def close(self) -> None:
        self.usable = False
        self.sock.close()
