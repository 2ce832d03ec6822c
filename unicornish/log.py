"""Logging that a supervisor can trust.

Every line goes straight to file descriptor 2 with one write(2): the master
and all workers append to the same file without interleaving half lines, and
a reopen (USR1) is a dup2 onto fd 2, so everything that writes to stderr
(tracebacks, faulthandler dumps, the app's own stderr) follows the log file.
A failed write (disk full, a closed pipe) is counted and dropped: losing a
log line must never take the master down.
"""

from __future__ import annotations

import logging
import os
import time

LOGGER_NAME = "unicornish"


def timestamp(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"[{timestamp(record.created)}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class FdHandler(logging.Handler):
    """Writes each record to a file descriptor in one system call."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd
        self.dropped = 0
        self.setFormatter(LineFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a bad log argument must not kill anyone
            self.dropped += 1
            return
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError:
            self.dropped += 1

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.dropped += 1


_handler = FdHandler()


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def setup() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


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
