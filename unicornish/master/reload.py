"""HUP: a new release (settings, app, user), rolled out slot by slot, kept or taken back.

`build_release` does everything that can fail before a single worker is
touched: re-read the config file, resolve the user, load (with --preload)
or compile the app. A `RollingReload` is the one object that says a reload
is under way and what to go back to if it fails; the master commits it when
every slot runs the new release, and aborts it when a new worker dies
before it was ready.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from unicornish import app as app_module
from unicornish.app import AppError
from unicornish.config import OPTIONS, Settings, build_settings
from unicornish.errors import StartupError
from unicornish.host import log, pid1, pidfile, privileges
from unicornish.host.systemd import Notifier, monotonic_usec
from unicornish.master.autoscale import count_after_reload
from unicornish.master.children import Stopper, WorkerProc, WorkerTable
from unicornish.master.moldlink import MoldLink
from unicornish.master.pool import Pool
from unicornish.master.spawner import Release
from unicornish.master.state import RollingReload, State
from unicornish.worker.kinds import kind_module


class ReloadError(Exception):
    """Why a reload was refused: the old release keeps running."""


def build_release(cli_values: dict[str, Any], generation: int) -> tuple[Release, list[str]]:
    """The next release, and warnings about its settings; raises ReloadError."""
    try:
        settings, warnings = build_settings(cli_values)
    except StartupError as exc:
        raise ReloadError(f"reload failed: {exc}; old settings and workers kept") from None
    try:
        identity = privileges.resolve(settings.user) if settings.user else None
    except StartupError as exc:
        raise ReloadError(f"reload failed: {exc}; old settings and workers kept") from None
    spec = settings.app_spec
    compiled = None
    try:
        app = kind_module(settings.kind).load(spec, None) if settings.preload else None
        if app is None:
            compiled = precheck_app(spec)  # a HUP compiles anew; the workers run this code
    except AppError as exc:
        raise ReloadError(f"reload failed: {exc}; old workers kept") from None
    release = Release(settings, app, identity, app_module.describe(spec), generation, compiled)
    return release, warnings


def precheck_app(spec: str) -> app_module.CompiledApp | None:
    """Catch a syntax error in the master, without running the app's code. The
    code compiled here is what the new release's workers run (None for a module)."""
    if not app_module.is_path(spec):
        return None
    try:
        return app_module.compile_app(spec)
    except OSError as exc:
        raise AppError(f"cannot read app file {spec}: {exc.strerror}") from None
    except SyntaxError as exc:
        raise AppError(
            f"cannot load app {spec}: SyntaxError: {exc.msg}"
            + (f" (line {exc.lineno})" if exc.lineno else "")
        ) from None
    except ValueError as exc:
        raise AppError(f"cannot load app {spec}: {exc}") from None


def apply_settings(old: Settings, new: Settings, logger: logging.Logger) -> None:
    """What changes for the master itself when the settings change."""
    if new.log_format != old.log_format:
        log.set_format(new.log_format)  # workers forked from now on inherit it
    if new.log_file != old.log_file and new.log_file:
        error = log.reopen(new.log_file)
        if error:
            logger.error("%s", error)
    if new.pid != old.pid:
        if old.pid:
            pidfile.remove_if_ours(old.pid, os.getpid())
        if new.pid:
            pidfile.write_logged(new.pid, logger)
    for option in OPTIONS:
        if option.applied_by == "USR2" and getattr(new, option.name) != getattr(old, option.name):
            logger.warning("%s", option.hup_warning)
    if new.subreaper and not old.subreaper:
        pid1.become_subreaper(logger)


# HUPs closer together than this make one reload (a storm forks a few generations).
RELOAD_COALESCE = 1.0
# How long a new worker of a failed reload gets to finish what it began (QUIT).
ABORT_WAIT = 5.0


class Reloader:
    """The owner of the release the workers should run (`state.release`), and
    of the reload that changes it (`state.rolling`).

    Only one reload is under way at a time: a HUP during one starts the next
    generation but keeps the rollback point of the first, the last release
    proven to work.
    """

    def __init__(
        self,
        state: State,
        cli_values: dict[str, Any],
        pool: Pool,
        stopper: Stopper,
        notifier: Notifier,
        log: logging.Logger,
        switched: Callable[[Release, Release], None],
    ) -> None:
        self.state = state
        self.cli_values = cli_values
        self.pool = pool
        self.stopper = stopper
        self.notifier = notifier
        self.log = log
        self.switched = switched
        self.last_at = -RELOAD_COALESCE
        self.pending = False
        # Told "done" or "failed" as each reload ends (the metrics count them).
        self.on_result: Callable[[str], None] = lambda result: None
        # Told (kind, result, the release now current) as a reload or refork ends.
        self.on_settled: Callable[[str, str, Release], None] = lambda kind, result, release: None
        # Told when a HUP (or `ctl reload`) brings a new release from the app file.
        self.on_reload: Callable[[], None] = lambda: None
        pool.on_reload_done = self.commit

    @property
    def current(self) -> Release:
        return self.state.release

    def hup(self) -> None:
        if time.monotonic() - self.last_at < RELOAD_COALESCE:
            self.pending = True  # one reload for a storm of HUPs
        else:
            self.reload("HUP")

    def tick(self, now: float) -> float | None:
        """A HUP held back by the storm rule, when its second is over."""
        if not self.pending:
            return None
        due = self.last_at + RELOAD_COALESCE
        if now < due:
            return due
        self.pending = False
        self.reload("HUP")
        return now  # the pool has a new release to roll out: another turn at once

    def reload(self, why: str) -> str | None:
        """HUP and `ctl reload`; returns why the reload was refused, if it was."""
        if self.state.stopping:  # draining included: no reload on the way out
            # Every refusal is logged: a HUP that did nothing must say so.
            self.log.info("%s ignored: master is stopping", why)
            return "master is stopping"
        self.last_at = time.monotonic()
        self.log.info("%s received: reloading config and app", why)
        self.notifier.send("RELOADING=1", monotonic_usec())
        try:
            release, warnings = build_release(self.cli_values, self.current.generation + 1)
        except ReloadError as exc:
            self.log.error("%s", exc)
            self.notifier.send("READY=1")
            self.on_result("failed")
            return str(exc)
        for warning in warnings:
            self.log.warning("%s", warning)
        self.on_reload()
        # A HUP during a reload still goes back to the last *proven* release.
        rolling = self.state.rolling
        rollback = rolling.rollback if rolling else self.current
        rollback_wanted = rolling.rollback_wanted if rolling else self.pool.wanted
        wanted = count_after_reload(release.settings, self.pool.wanted)
        self.state.rolling = RollingReload(rollback, rollback_wanted, wanted)
        self.switch_to(release)
        self.pool.scale(wanted)
        self.pool.batch = None
        return None

    def refork(self, mold: MoldLink) -> bool:
        """A generation forked from `mold`, replacing the workers one at a time;
        False when a reload or refork is under way or the master is stopping."""
        if self.state.rolling is not None or self.state.stopping:
            return False
        current = self.current
        wanted = self.pool.wanted
        self.state.rolling = RollingReload(current, wanted, wanted, kind="refork")
        self.switch_to(
            replace(
                current,
                generation=current.generation + 1,
                mold=mold,
                refork_index=current.refork_index + 1,
            )
        )
        self.pool.batch = 1  # one at a time: each new worker forks from the mold
        return True

    def switch_to(self, release: Release) -> None:
        old, self.state.release = self.current, release
        self.switched(old, release)

    def commit(self) -> None:
        """Every slot runs the new release."""
        rolling, self.state.rolling = self.state.rolling, None
        self.pool.batch = None
        mold = self.current.mold
        if rolling is not None and rolling.kind == "refork" and mold is not None:
            wanted = self.pool.wanted
            if mold.usable:
                how = f"forked from mold pid={mold.pid}"
            else:
                molded = min(wanted, mold.forks)
                how = f"({molded} forked from mold pid={mold.pid} before it was given up, "
                how += f"{wanted - molded} from the master)"
            self.log.info("refork done: %d workers %s", wanted, how)
            self.on_settled("refork", "done", self.current)
            return
        if gc.get_freeze_count():
            # The old preloaded app sits in the frozen generation, out of the
            # collector's reach; thaw so it can be freed. The next fork freezes again.
            gc.unfreeze()
        self.log.info("reload done: %d workers run the new app", self.pool.wanted)
        self.on_result("done")
        self.on_settled("reload", "done", self.current)

    def abort(self, failed: WorkerProc, code: int | None, table: WorkerTable) -> None:
        """A new worker died before it was ready: back to the last proven release."""
        rolling = self.state.rolling
        if rolling is None:
            return
        if rolling.kind == "refork":
            self.log.error(
                "refork failed: new %s exited before it was ready (status %s); "
                "workers fork from the previous template",
                failed.label,
                code,
            )
        else:
            self.log.error(
                "reload failed: new %s exited before it was ready (status %s); "
                "old workers and settings kept",
                failed.label,
                code,
            )
        now = time.monotonic()
        # A generation of its own for what we go back to: spares of the failed
        # release are retired, and every worker still running counts as current.
        generation = self.current.generation + 1
        for w in table.live():
            if w.generation == self.current.generation and w.ready_at is None:
                # QUIT, not TERM: one may be ready and serving already, its report
                # still in the pipe; it finishes that request. SIGKILL soon after.
                self.stopper.stop(w, signal.SIGQUIT, now, ABORT_WAIT)
            table.set_generation(w, generation)
        self.switch_to(replace(rolling.rollback, generation=generation))
        if self.pool.wanted == rolling.wanted:
            self.pool.scale(rolling.rollback_wanted)
        self.state.rolling = None
        self.pool.batch = None
        if rolling.kind == "refork":
            self.on_settled("refork", "failed", self.current)
            return
        self.notifier.send("READY=1")
        self.on_result("failed")
        self.on_settled("reload", "failed", self.current)
