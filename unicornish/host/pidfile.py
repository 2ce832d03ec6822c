"""The master's pid file: atomic, never through a planted symlink, never someone else's."""

from __future__ import annotations

import logging
import os

import psutil

from unicornish.errors import StartupError


def read_pid(path: str) -> int | None:
    """The pid a pid file names, or None (missing, garbage, not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _is_regular(fd):
            return None
        data = os.read(fd, 64)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        pid = int(data.strip() or b"x")
    except ValueError:
        return None
    return pid if pid > 0 else None


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def is_unicornish_master(pid: int) -> bool:
    """True when pid is alive and is a unicornish process (not a reused pid)."""
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        name, args = proc.name(), proc.cmdline()
    except psutil.AccessDenied:
        return True  # alive and not ours to read: play safe, do not steal its file
    except psutil.Error:
        return False
    return looks_like_master(name, args)


def looks_like_master(name: str, args: list[str]) -> bool:
    """A master's title, or its command line before it set one. Not merely a
    mention of unicornish (`tail -f unicornish.host.log` may have the pid now)."""
    if name == "unicornish" or " ".join(args).startswith("unicornish master"):
        return True
    if not args:
        return False
    if os.path.basename(args[0]) == "unicornish":
        return True  # the console script, exec'd directly
    if not os.path.basename(args[0]).startswith("python") or len(args) < 2:
        return False
    # `python -m unicornish ...` (bin/unicornish) or `python .../bin/unicornish ...`
    return os.path.basename(args[1]) == "unicornish" or args[1:3] == ["-m", "unicornish"]


def check(path: str) -> str | None:
    """Refuse to start beside a live master; return a warning for a stale file."""
    if os.path.isdir(path):
        raise StartupError(f"pid file {path} is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(f"pid file directory does not exist: {directory}")
    if not os.access(directory, os.W_OK):
        raise StartupError(f"pid file directory is not writable: {directory}")
    if not os.path.lexists(path):
        return None
    pid = read_pid(path)
    if pid is not None and is_unicornish_master(pid):
        raise StartupError(f"already running: pid file {path} names live master pid={pid}")
    return f"replacing stale pid file {path}" + (f" ({_why_stale(pid)})" if pid else "")


def _why_stale(pid: int) -> str:
    """A reused pid (pid 1, a shell) is alive: "not running" would send the
    reader looking for a crash that never happened."""
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        alive = False
    return f"pid={pid} is not a unicornish master" if alive else f"pid={pid} is not running"


def check_writable(path: str) -> None:
    """Create and remove a file beside the pid file, as write() will later.

    os.access() says yes to root on sysfs, procfs or a read-only bind mount:
    only a real creation proves the master can write its pid file, and a
    master that cannot should not start (a -D launcher would report success).
    mkstemp() opens with O_CREAT | O_EXCL | O_NOFOLLOW under a random name, so
    a planted file or symlink is never followed or truncated.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        import tempfile  # only here: it imports shutil, random and more

        fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        raise StartupError(f"cannot write pid file {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass  # removed already by someone else: the write worked, which is all we ask


def write(path: str, pid: int) -> None:
    """Write atomically: a new file beside it, then rename over (which replaces a
    symlink itself instead of following it)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{pid}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644)
    try:
        try:
            os.write(fd, f"{pid}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        # A full disk fails the write, not the creation: the empty file would
        # stay beside the pid file for good.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_if_ours(path: str, pid: int) -> bool:
    if read_pid(path) != pid:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def write_logged(path: str, logger: logging.Logger) -> None:
    """The master's own pid, once running: a failure is logged, never fatal."""
    try:
        write(path, os.getpid())
    except OSError as exc:
        logger.error("cannot write pid file %s: %s", path, exc.strerror or exc)
