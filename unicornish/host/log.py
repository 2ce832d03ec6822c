"""Logging that a supervisor can trust.

Every line goes straight to file descriptor 2 with one write(2): the master
and all workers append to the same file without interleaving half lines, and
a reopen (USR1) is a dup2 onto fd 2, so everything that writes to stderr
(tracebacks, faulthandler dumps, the app's own stderr) follows the log file.
A failed write (disk full, a closed pipe) is counted and dropped: losing a
log line must never take the master down. Nor may a full pipe or socket (a
stalled journald, a `| logger` that stopped reading) stop it: lines to a pipe
or a socket go through a non-blocking twin of fd 2, and are dropped while it
is full; the next line that gets through says how many were lost.

Text lines start with the time and the writer's pid, `[TIME #PID] `.
`--log-format json` writes the same lines as one JSON object each (for log
shippers): time, level, event, pid, message, plus nr and status where they
apply. Lifecycle lines carry a short stable `event` key, given by their call
site with `extra=event(...)`; every other line is event "log".
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

LOGGER_NAME = "unicornish"
LOG_FORMATS = ("text", "json")
# A worker's logger is unicornish.workerN (worker.log): its lines carry nr N.
_WORKER_LOGGER = re.compile(re.escape(LOGGER_NAME) + r"\.worker(\d+)\Z")


def printable(text: str) -> str:
    """`text` made safe for a strict UTF-8 encoder (process titles, JSON readers):
    the undecodable bytes of a file name (surrogate escapes, as os.fsdecode and
    sys.argv give them) become U+FFFD, any other lone surrogate a '?'."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def timestamp(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))


_json = False  # --log-format json: lifecycle lines carry their event and fields


def event(name: str, **fields: Any) -> dict[str, Any] | None:
    """`extra=` for a lifecycle line: its event key and fields (pid, nr, status...).
    Only the JSON format reads them: with text (the default) there is nothing to
    build, on the respawn path above all."""
    if not _json:
        return None
    return {"unicornish_event": name, "unicornish_fields": fields}


class LineFormatter(logging.Formatter):
    """`[TIME #PID] message`: the writer's pid, as Unicorn's lines carry it, so the
    lines of two masters sharing one log during a USR2 (and of their workers)
    can be told apart."""

    def format(self, record: logging.LogRecord) -> str:
        pid = record.process or os.getpid()
        text = f"[{timestamp(record.created)} #{pid}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line. `pid` is the worker's on lines about one worker
    (given by the call site, or the writer's own pid in a worker), else the
    writer's; `nr` is on worker lines only; a traceback goes in `traceback`."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "unicornish_event", "log"),
            "pid": record.process,
        }
        match = _WORKER_LOGGER.match(record.name)
        if match:
            entry["nr"] = int(match.group(1))
        fields = getattr(record, "unicornish_fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class FdHandler(logging.Handler):
    """Writes each record to a file descriptor in one system call."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd
        self.dropped = 0
        self.unreported = 0  # dropped because the pipe was full, not yet said
        self._twin_of: tuple[int, int] | None = None
        self._twin_fd: int | None = None
        self._twin_sock: socket.socket | None = None
        self.setFormatter(LineFormatter())

    def _refresh_twin(self) -> None:
        """Follow fd 2 (USR1, --log-file, -D dup2 onto it): for a pipe or a socket,
        keep a non-blocking description of our own, leaving fd 2's flags alone
        (workers and the app share them)."""
        try:
            st = os.fstat(self.fd)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key == self._twin_of:
            return
        self._close_twin()
        self._twin_of = key
        try:
            if stat.S_ISFIFO(st.st_mode):
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                self._twin_fd = os.open(f"/proc/self/fd/{self.fd}", flags)
            elif stat.S_ISSOCK(st.st_mode):
                self._twin_sock = socket.socket(fileno=os.dup(self.fd))
        except OSError:
            pass  # no reader left, or no /proc: plain writes, which fail or block

    def _close_twin(self) -> None:
        if self._twin_fd is not None:
            try:
                os.close(self._twin_fd)
            except OSError:
                pass
        if self._twin_sock is not None:
            try:
                self._twin_sock.close()
            except OSError:
                pass
        self._twin_fd = self._twin_sock = None

    def _write(self, data: bytes) -> None:
        while data:
            if self._twin_sock is not None:
                written = self._twin_sock.send(data, socket.MSG_DONTWAIT)
            elif self._twin_fd is not None:
                written = os.write(self._twin_fd, data)
            else:
                written = os.write(self.fd, data)
            data = data[written:]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = printable(self.format(record) + "\n").encode()
        except Exception:  # noqa: BLE001 - a bad log argument must not kill anyone
            self.dropped += 1
            return
        self._refresh_twin()
        try:
            if self.unreported:
                notice = f"{self.unreported} log lines dropped: log output was full"
                line = logging.LogRecord(LOGGER_NAME, logging.WARNING, "", 0, notice, None, None)
                self._write(printable(self.format(line) + "\n").encode())
                self.unreported = 0
            self._write(data)
        except BlockingIOError:
            self.dropped += 1
            self.unreported += 1
        except OSError:
            self.dropped += 1

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.dropped += 1


_handler = FdHandler()


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def setup() -> logging.Logger:
    # No record needs the caller's file and line: skip logging's walk up the
    # stack for each line (the Logging HOWTO's "Optimization").
    logging._srcfile = None
    logger = logging.getLogger(LOGGER_NAME)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def set_format(name: str) -> None:
    """--log-format: `text` (the default) or `json`; forked workers inherit it."""
    global _json
    _json = name == "json"
    _handler.setFormatter(JsonFormatter() if _json else LineFormatter())


def dropped_lines() -> int:
    return _handler.dropped


# With -D, stdout (the app's prints) follows the log file too.
_stdout_too = False


def follow_stdout() -> None:
    global _stdout_too
    _stdout_too = True


def open_log_file(path: str) -> None:
    """Point fd 2 (and fd 1 when daemonized) at the log file (append).
    Raises OSError when it cannot."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.dup2(fd, 2)
        if _stdout_too:
            os.dup2(fd, 1)
    finally:
        os.close(fd)


def reopen(path: str | None) -> str | None:
    """Reopen the log file after a rotation; return an error message or None."""
    if not path:
        return None
    try:
        open_log_file(path)
    except OSError as exc:
        return f"cannot reopen log file {path}: {exc.strerror or exc}"
    return None


def flush_stdio() -> None:
    """Flush Python's stdio buffers before a fork or an exit (a closed one is fine)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - nothing to flush into
            pass


class Throttled:
    """Logs a line of one kind (`key`) at most once per `every` seconds, saying
    how many of that kind it did not log in between: for what may repeat on
    every scrape, request or turn of a loop (a bad value, a failing duty, a
    client sending garbage)."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self.seen: dict[str, tuple[float, int]] = {}  # key -> (logged at, not logged since)

    def due(self, key: str) -> int | None:
        """None while `key` was logged less than `every` ago (counted), else how
        many of it were left out since."""
        now = self.clock()
        last, unsaid = self.seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self.seen[key] = (last, unsaid + 1)
            return None
        self.seen[key] = (now, 0)
        return unsaid

    def warn(self, key: str, message: str) -> bool:
        """True when the line was logged."""
        unsaid = self.due(key)
        if unsaid is None:
            return False
        more = f" ({unsaid} more like it since)" if unsaid else ""
        try:
            self.log.warning("%s%s", message, more)
        except Exception:  # noqa: BLE001 - a log that cannot be written must not fail the caller
            pass
        return True


class ErrorLog(Throttled):
    """A failing step of a loop, logged with its traceback, the same step at most
    once per `every` seconds."""

    def failed(self, name: str) -> None:
        unsaid = self.due(name)
        if unsaid is None:
            return
        more = f" ({unsaid} more since)" if unsaid else ""
        try:
            self.log.exception("master loop error in %s%s; carrying on", name, more)
        except Exception:  # noqa: BLE001 - a log that cannot be written must not end us
            pass
