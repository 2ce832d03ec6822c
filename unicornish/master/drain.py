"""--drain SECONDS: a stop first says "not ready" and keeps serving, then stops.

Why: a load balancer (a Kubernetes Service's endpoints, a proxy polling a
readiness check) learns that an instance is going away some time after the
stop signal was sent. Requests it still routes here in that time must find
workers that accept them. So a stop (QUIT, `ctl stop`, TERM with --term
graceful) first turns the master's readiness off, keeps every worker
serving for SECONDS, and only then starts the graceful stop, whose own
limit is --graceful-timeout: the whole stop takes at most the sum.

`Drain` is a duty: its tick returns the drain's end and, once that has
come, starts the graceful stop through the callable it was given. It holds
no timer and never sleeps. A second stop signal during the drain skips the
rest of it (`cancel`, then the master stops the workers itself), as does a
quick stop; the master decides which signal means what.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


def describe_plan(drain: float, graceful_timeout: float) -> str:
    """The stop's time budget, as logged at start and when a drain begins."""
    return (
        f"stop: drain {drain:g}s, then graceful up to {graceful_timeout:g}s "
        f"(at most {drain + graceful_timeout:g}s in all)"
    )


class Drain:
    def __init__(self, log: logging.Logger, finish: Callable[[str], None]) -> None:
        self.log = log
        # Starts the graceful stop; its argument says why (for the log line).
        self.finish = finish
        self.started_at: float | None = None
        self.until: float | None = None

    @property
    def active(self) -> bool:
        return self.until is not None

    def start(self, now: float, seconds: float) -> bool:
        """Begin draining for `seconds`; False (nothing begun) when there is nothing to drain."""
        if seconds <= 0 or self.active:
            return False
        self.started_at = now
        self.until = now + seconds
        return True

    def cancel(self) -> bool:
        """End the drain without its callback (the master stops the workers itself:
        a second stop signal, or a quick stop); True when one was under way."""
        active = self.active
        self.until = None
        return active

    def remaining(self, now: float) -> float:
        return 0.0 if self.until is None else max(0.0, self.until - now)

    def tick(self, now: float) -> float | None:
        """The drain's end, or, once it has come, start the graceful stop."""
        if self.until is None:
            return None
        if now < self.until:
            return self.until
        started = self.started_at if self.started_at is not None else now
        self.until = None
        self.finish(f"drain over after {now - started:.1f}s")
        return now  # the master is stopping now: the other duties must see it at once
