"""Where the master's listeners come from: inherited (USR2, systemd) or bound anew.

An inherited socket whose address matches a --listen address is reused, so
an upgrade never closes a listening socket and no connection is refused.
Inherited sockets that match nothing are kept too (systemd socket units,
listeners dropped from the config take effect only after a restart).

An old master passes its listeners in UNICORNISH_FD (fd numbers), and, in
UNICORNISH_FD_SYSTEMD, which of them systemd created: the socket file of a
systemd socket unit belongs to systemd and is never removed by us.
"""

from __future__ import annotations

import os
import socket
import stat

from unicornish.errors import StartupError
from unicornish.host import sockets as sockets_module
from unicornish.host.systemd import SD_LISTEN_FDS_START

FD_ENV = "UNICORNISH_FD"
SYSTEMD_FD_ENV = "UNICORNISH_FD_SYSTEMD"

BOUND = "bound"
FROM_OLD_MASTER = "inherited"
FROM_SYSTEMD = "systemd"

# fd -> where that listener came from (BOUND, FROM_OLD_MASTER, FROM_SYSTEMD).
ORIGIN: dict[int, str] = {}


def _socket_from_fd(fd: int, source: str) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise StartupError(f"{source}: fd {fd} is not open") from None
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{source}: fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise StartupError(f"{source}: fd {fd} is not a listening stream socket")
    sock.set_inheritable(False)
    return sock


def _parse_fd_list(text: str, source: str) -> list[int]:
    fds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise StartupError(f"{source}={text!r}: expected comma-separated fd numbers")
        fd = int(part)
        if fd < 3:
            raise StartupError(f"{source}={text!r}: fd {fd} is stdin/stdout/stderr")
        if fd in fds:
            raise StartupError(f"{source}={text!r}: fd {fd} is listed twice")
        fds.append(fd)
    return fds


def inherited_sockets() -> list[socket.socket]:
    """Sockets passed by an old master (UNICORNISH_FD) or systemd (LISTEN_FDS)."""
    found: list[socket.socket] = []
    text = os.environ.pop(FD_ENV, None)
    systemd_text = os.environ.pop(SYSTEMD_FD_ENV, None)
    if text is not None:
        fds = _parse_fd_list(text, FD_ENV)
        systemd_fds = _parse_fd_list(systemd_text or "", SYSTEMD_FD_ENV)
        stray = [fd for fd in systemd_fds if fd not in fds]
        if stray:
            raise StartupError(f"{SYSTEMD_FD_ENV}: fd {stray[0]} is not in {FD_ENV}={text!r}")
        for fd in fds:
            found.append(_socket_from_fd(fd, FD_ENV))
            ORIGIN[fd] = FROM_SYSTEMD if fd in systemd_fds else FROM_OLD_MASTER
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if count is not None:
        if not count.isdigit():
            raise StartupError(f"LISTEN_FDS={count!r} is not a number")
        if pid is None or not pid.isdigit():
            what = "is not set" if pid is None else f"={pid!r} is not a pid"
            raise StartupError(f"LISTEN_PID {what} (LISTEN_FDS is set)".replace(" =", "="))
        if int(pid) == os.getpid():
            have = {s.fileno() for s in found}
            for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
                if fd not in have:
                    found.append(_socket_from_fd(fd, "LISTEN_FDS"))
                    ORIGIN[fd] = FROM_SYSTEMD
    return found


def same_address(sock: socket.socket, address: sockets_module.Address) -> bool:
    if sock.family != address.family:
        return False
    name = sock.getsockname()
    if address.family == socket.AF_UNIX:
        return bool(name == address.path)
    try:
        infos = socket.getaddrinfo(address.host, address.port, address.family, socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    if address.port == 0:  # "any port": the one the old master got is the one we want
        return any(info[4][0] == name[0] for info in infos)
    return any(info[4][:2] == name[:2] for info in infos)


def setup_listeners(specs: tuple[str, ...] | list[str]) -> list[socket.socket]:
    inherited = inherited_sockets()
    listeners: list[socket.socket] = []
    for spec in specs:
        address = sockets_module.parse_address(spec)
        match = next((s for s in inherited if same_address(s, address)), None)
        if match is not None:
            inherited.remove(match)
            listeners.append(match)
        else:
            try:
                sock = sockets_module.bind(address)
            except StartupError:
                sockets_module.close_all(listeners + inherited)
                raise
            ORIGIN[sock.fileno()] = BOUND
            listeners.append(sock)
    return listeners + inherited


def describe(sock: socket.socket) -> str:
    """`127.0.0.1:8000 fd=5`, plus where it came from when it was inherited."""
    fd = sock.fileno()
    try:
        text = f"{sockets_module.socket_address(sock)} fd={fd}"
    except OSError:
        text = f"fd={fd}"
    origin = ORIGIN.get(fd, BOUND)
    if origin == FROM_OLD_MASTER:
        text += " (inherited from the old master)"
    elif origin == FROM_SYSTEMD:
        text += " (from systemd)"
    return text


def systemd_fds(listeners: list[socket.socket]) -> list[int]:
    return [s.fileno() for s in listeners if ORIGIN.get(s.fileno()) == FROM_SYSTEMD]


def close_all(listeners: list[socket.socket], unlink_unix: bool) -> None:
    """Close; remove unix socket files we own (never a systemd socket unit's)."""
    ours = [s for s in listeners if ORIGIN.get(s.fileno()) != FROM_SYSTEMD]
    theirs = [s for s in listeners if ORIGIN.get(s.fileno()) == FROM_SYSTEMD]
    sockets_module.close_all(ours, unlink_unix=unlink_unix)
    sockets_module.close_all(theirs, unlink_unix=False)
