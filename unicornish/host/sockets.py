"""Listeners: parsed from --listen, bound by the master, inherited by workers."""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from unicornish.errors import StartupError, UsageError
from unicornish.host import log

BACKLOG = 1024
BIND_RETRIES = 5
BIND_RETRY_DELAY = 0.5


@dataclass(frozen=True)
class Address:
    family: int
    host: str
    port: int
    path: str = ""
    mode: int | None = None

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.path}"
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _port(text: str, spec: str, option: str = "--listen") -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise UsageError(f"{option} {spec!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"{option} {spec!r}: port must be 0..65535")
    return port


def _looks_like_mode(tail: str) -> bool:
    """The text after the last ':' is meant as a mode when it is empty or starts
    with a digit and names no directory: `:999` or `:0o660` is a mistyped mode,
    never part of a path, while `unix:/run/a:b/x.sock` keeps its ':'. A path
    whose last ':' is followed by a digit needs an explicit mode after it
    (`unix:/run/app:1:0660`)."""
    return not tail or (tail[0].isdigit() and "/" not in tail)


def _unix_path_and_mode(spec: str, option: str = "--listen") -> tuple[str, int | None]:
    """`unix:PATH` or `unix:PATH:MODE`, MODE octal 0..0777."""
    path, mode = spec[5:], None
    head, sep, tail = path.rpartition(":")
    if sep and _looks_like_mode(tail):
        if not head:
            raise UsageError(f"{option} {spec!r}: unix: needs a path before the mode")
        if not tail or any(c not in "01234567" for c in tail) or int(tail, 8) > 0o777:
            raise UsageError(f"{option} {spec!r}: mode must be octal 0..0777, e.g. 0660")
        path, mode = head, int(tail, 8)
    if not path:
        raise UsageError(f"{option} {spec!r}: unix: needs a path")
    return path, mode


def parse_address(spec: str, option: str = "--listen") -> Address:
    """`HOST:PORT`, `[V6]:PORT`, `PORT`, `unix:/path` or `unix:/path:MODE` (octal).
    `option` names the option in error messages (--listen, --metrics)."""
    if spec.startswith("unix:"):
        path, mode = _unix_path_and_mode(spec, option)
        return Address(socket.AF_UNIX, "", 0, os.path.abspath(path), mode)
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(f"{option} {spec!r}: expected [V6ADDR]:PORT")
        return Address(socket.AF_INET6, host, _port(rest[1:], spec, option))
    if spec.isdigit():
        return Address(socket.AF_INET, "0.0.0.0", _port(spec, spec, option))
    host, sep, port = spec.rpartition(":")
    if not sep or not host:
        raise UsageError(f"{option} {spec!r}: expected HOST:PORT, [V6]:PORT or unix:/path")
    if ":" in host:
        raise UsageError(f"{option} {spec!r}: write IPv6 addresses as [ADDR]:PORT")
    if host == "*":
        host = "0.0.0.0"
    return Address(socket.AF_INET, host, _port(port, spec, option))


def socket_address(sock: socket.socket) -> str:
    """The --listen form of a bound socket's address, to match inherited listeners."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name if isinstance(name, str) else name.decode(errors='replace')}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def _clear_stale_unix(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"cannot listen on unix:{path}: a file that is not a socket is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: a stale socket left by a dead process
        return
    finally:
        probe.close()
    raise StartupError(f"cannot listen on unix:{path}: another process is listening there")


def resolve(address: Address) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """The family and socket address to bind a TCP address to; raises socket.gaierror."""
    infos = socket.getaddrinfo(
        address.host, address.port, address.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr  # type: ignore[return-value]


def listen_tcp(
    family: int,
    sockaddr: tuple[str, int] | tuple[str, int, int, int],
    backlog: int = BACKLOG,
) -> socket.socket:
    """One attempt to bind and listen (IPv6 v6-only); raises OSError, leaving no socket open."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def bind(address: Address) -> socket.socket:
    """Bind and listen, retrying briefly while the address is busy."""
    if address.family == socket.AF_UNIX:
        _clear_stale_unix(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 ^ address.mode) if address.mode is not None else None
            try:
                sock.bind(address.path)
            finally:
                if old_umask is not None:
                    os.umask(old_umask)
            if address.mode is not None:
                os.chmod(address.path, address.mode)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        return sock
    try:
        family, sockaddr = resolve(address)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    for attempt in range(BIND_RETRIES):
        try:
            return listen_tcp(family, sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and attempt + 1 < BIND_RETRIES:
                log.get_logger().warning(
                    "cannot listen on %s: %s; retrying in %gs",
                    address,
                    exc.strerror,
                    BIND_RETRY_DELAY,
                )
                time.sleep(BIND_RETRY_DELAY)
                continue
            raise StartupError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    raise AssertionError("unreachable")


def close_all(sockets: list[socket.socket], unlink_unix: bool = False) -> None:
    for sock in sockets:
        path = ""
        if unlink_unix and sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            path = name if isinstance(name, str) else ""
        try:
            sock.close()
        except OSError:
            pass
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


# accept() failing for these is the machine's lack of fds or memory: stop
# listening a while, or the still-readable socket would wake the loop at once.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def accept_some(
    sock: socket.socket,
    admit: Callable[[socket.socket], None],
    limit: int,
    more: Callable[[], bool] = lambda: True,
) -> OSError | None:
    """Accept up to `limit` connections of a non-blocking listener (while `more()`),
    handing each to `admit`; the error when accept() ran out of resources."""
    for _ in range(limit):
        if not more():
            return None
        try:
            conn, _addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc if exc.errno in OUT_OF_RESOURCES else None
        admit(conn)
    return None
