"""What the master's duties read of its state: one record, each fact written by one owner.

The release the workers should run, the worker count wanted, the reload or
refork rolling out and where a stop has got to live in one `State`, made
before any component. Its owners write it (the reloader: `release` and
`rolling`; the pool: `wanted`; the shutdown: `stopping`; the loop:
`grace_from`); every other component gets it as a `View`, whose properties
mypy refuses to assign. So no component holds a getter into an object built
after it, and the order of the wiring cannot change what a duty reads.

"Stopping" means one thing at every level: asked to stop, not gone yet. The
master's `stopping` is the stop under way: None, "draining" (asked to stop,
still serving, not ready), "graceful" or "quick" (its workers are being
stopped: `stopping_workers`). A child's `stopping` (children.WorkerProc)
says it was asked to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from unicornish.config import Settings
from unicornish.master.spawner import Release

DRAINING = "draining"
GRACEFUL = "graceful"
QUICK = "quick"


@dataclass(frozen=True)
class RollingReload:
    """A new release rolling out slot by slot, and what to go back to if it fails."""

    rollback: Release  # the last release proven to work
    rollback_wanted: int
    wanted: int  # the count this reload set; a TTIN/TTOU since then is kept on abort
    kind: str = "reload"  # or "refork": the same release, forked from a mold


class View(Protocol):
    """The master's state as the components read it."""

    @property
    def release(self) -> Release: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def wanted(self) -> int: ...

    @property
    def rolling(self) -> RollingReload | None: ...

    @property
    def reloading(self) -> bool: ...

    @property
    def stopping(self) -> str | None: ...

    @property
    def stopping_workers(self) -> bool: ...

    @property
    def grace_from(self) -> float: ...


@dataclass(eq=False)
class State:
    release: Release
    wanted: int
    rolling: RollingReload | None = None
    stopping: str | None = None
    # Busy workers' --timeout (and --give-up-after) count from here after a suspension.
    grace_from: float = 0.0

    @property
    def settings(self) -> Settings:
        return self.release.settings

    @property
    def reloading(self) -> bool:
        """A HUP's release is rolling out (a refork is not: the app is the same)."""
        return self.rolling is not None and self.rolling.kind == "reload"

    @property
    def stopping_workers(self) -> bool:
        """The stop has reached the workers (a drain has not: they still serve)."""
        return self.stopping in (GRACEFUL, QUICK)
