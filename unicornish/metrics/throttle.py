"""Warnings that a scrape may repeat every few seconds, logged at most once a minute.

Prometheus scrapes every 15 s or so, and `ctl metrics` may be run in a loop:
a bad value left out of every scrape would otherwise log a line each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

EVERY = 60.0


class Throttled:
    """Logs a warning of one kind (`key`) at most once per `every` seconds,
    saying how many of that kind it did not log in between."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self.seen: dict[str, tuple[float, int]] = {}  # key -> (logged at, not logged since)

    def warn(self, key: str, message: str) -> bool:
        """True when the line was logged."""
        now = self.clock()
        last, unsaid = self.seen.get(key, (-self.every, 0))
        if now - last < self.every:
            self.seen[key] = (last, unsaid + 1)
            return False
        self.seen[key] = (now, 0)
        more = f" ({unsaid} more like it since)" if unsaid else ""
        try:
            self.log.warning("%s%s", message, more)
        except Exception:  # noqa: BLE001 - a log that cannot be written must not fail a scrape
            pass
        return True
