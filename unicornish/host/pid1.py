"""Orphans: as pid 1 (a container's init), whatever still runs at exit is ours
to stop and reap; as a child subreaper, orphaned descendants are reaped here."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Protocol

import psutil

from unicornish.host import linux
from unicornish.protocol import describe_status


class SignalWait(Protocol):
    """The master's loop, as far as the last wait for leftovers uses it."""

    def wait_for_signal(self, seconds: float) -> list[int]: ...


def become_subreaper(logger: logging.Logger) -> None:
    if linux.set_child_subreaper():
        logger.info("child subreaper: orphaned descendants of workers are reaped here")
    else:
        logger.error("--subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans(log: logging.Logger) -> bool:
    """Reap what has exited; False once there are no children left."""
    try:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
            log.info("reaped orphan pid=%d status=%s", pid, describe_status(status)[0])
    except ChildProcessError:
        return False


def stop_leftovers(loop: SignalWait, log: logging.Logger, wait: float) -> None:
    """TERM to every process of the namespace, then SIGKILL after `wait`."""
    try:
        leftovers = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return
    if not leftovers:
        return
    log.info("pid 1: sending TERM to %d leftover processes", len(leftovers))
    try:
        os.kill(-1, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + wait
    sent_kill = False
    while reap_orphans(log):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if sent_kill:
                return
            log.warning("pid 1: leftover processes did not exit; sending SIGKILL")
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            sent_kill = True
            deadline = time.monotonic() + 1.0
            continue
        loop.wait_for_signal(remaining)  # SIGCHLD wakes us through the signal pipe
