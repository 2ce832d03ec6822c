"""The master's one place to sleep: an epoll on its fds and the signal pipe.

Signal handlers do nothing: CPython's C-level handler writes each signal's
number to a self-pipe (signal.set_wakeup_fd), and the bytes read from it
are the queue of signals, in order. Components that own fds (the control
socket, the worker-report pipe) register a callback here; whatever must not
leak into a forked worker registers how to close it in the child.
"""

from __future__ import annotations

import math
import os
import select
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

Callback = Callable[[], None]

# epoll_wait takes an int of milliseconds: anything longer would overflow.
MAX_WAIT = 86_400.0
# A master that woke this much later than it meant to was suspended.
OVERSLEEP = 1.0


def _ignore(signum: int, frame: object) -> None:
    """The loop reads the signal from the wake-up pipe; nothing to do here."""


class EventLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signals: list[int] = []
        self._child_closes: list[Callback] = []
        self.suspended_at = 0.0  # when a suspension (SIGSTOP, a laptop lid) last ended
        self.suspended_for = 0.0  # and how much later than meant the master woke

    # -- fds --------------------------------------------------------------------

    def install_signals(self, signals: Iterable[int]) -> None:
        for signum in signals:
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.add_reader(self._wake_r, self._read_signals)

    def add_reader(self, fd: Any, callback: Callback) -> None:
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def set_events(self, fd: Any, events: int, callback: Callback) -> None:
        self.selector.modify(fd, events, callback)

    def remove(self, fd: Any) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def close_in_child(self, close: Callback) -> None:
        """`close` runs in every forked worker, so that it keeps only its own fds."""
        self._child_closes.append(close)

    def forget_in_child(self) -> None:
        """In a new child: drop the master's machinery (fds, signal pipe)."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for close in self._child_closes:
            close()

    # -- signals ------------------------------------------------------------------

    def _read_signals(self) -> None:
        try:
            while True:
                data = os.read(self._wake_r, 4096)
                if not data:
                    break
                self._signals.extend(data)
        except BlockingIOError:
            pass

    def take_signals(self) -> list[int]:
        self._read_signals()
        queue, self._signals = self._signals, []
        return queue

    @property
    def signals_pending(self) -> bool:
        return bool(self._signals)

    # -- sleeping -------------------------------------------------------------------

    def wait(self, deadline: float) -> None:
        """Sleep until `deadline` (monotonic) or an event; run the events' callbacks."""
        now = time.monotonic()
        wait = min(max(0.0, deadline - now), MAX_WAIT)
        if self._signals:
            wait = 0.0
        elif wait:
            # Round up a little: waking a hair early would only mean sleeping again.
            wait = math.ceil(wait * 1000) / 1000
        events = self.selector.select(wait)
        woke = time.monotonic()
        late = woke - (now + wait)
        if late > OVERSLEEP:
            self.suspended_at = woke
            self.suspended_for = late
        for key, _mask in events:
            key.data()

    def pause(self, seconds: float) -> None:
        """Wait on the signal pipe alone: after an error, without spinning, and
        without missing a stop signal (it cuts the pause short)."""
        try:
            select.select([self._wake_r], [], [], seconds)
        except (OSError, ValueError):
            time.sleep(seconds)

    def wait_for_signal(self, seconds: float) -> list[int]:
        """Only the signal pipe (SIGCHLD): a pending report or control client
        must not turn a final wait into a busy loop."""
        self.pause(seconds)
        return self.take_signals()
