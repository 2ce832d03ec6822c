"""HUP: a new release (settings, app, user), rolled out slot by slot, kept or taken back.

`build_release` does everything that can fail before a single worker is
touched: re-read the config file, resolve the user, load (with --preload)
or compile the app. A `RollingReload` is the one object that says a reload
is under way and what to go back to if it fails; the master commits it when
every slot runs the new release, and aborts it when a new worker dies
before it was ready.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from unicornish import app as app_module
from unicornish import linux, log, pidfile, privileges
from unicornish.app import AppError, load_app
from unicornish.config import Settings, build_settings
from unicornish.errors import StartupError
from unicornish.spawner import Release


class ReloadError(Exception):
    """Why a reload was refused: the old release keeps running."""


@dataclass
class RollingReload:
    rollback: Release  # the last release proven to work
    rollback_wanted: int
    wanted: int  # the count this reload set; a TTIN/TTOU since then is kept on abort


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
    spec = settings.app or ""
    try:
        app = load_app(spec) if settings.preload else None
        if app is None:
            precheck_app(spec)
    except AppError as exc:
        raise ReloadError(f"reload failed: {exc}; old workers kept") from None
    release = Release(settings, app, identity, app_module.describe(spec), generation)
    return release, warnings


def precheck_app(spec: str) -> None:
    """Catch a syntax error in the master, without running the app's code."""
    if not app_module.is_path(spec):
        return
    try:
        with open(spec, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise AppError(f"cannot read app file {spec}: {exc.strerror}") from None
    try:
        compile(source, spec, "exec")
    except SyntaxError as exc:
        raise AppError(
            f"cannot load app {spec}: SyntaxError: {exc.msg}"
            + (f" (line {exc.lineno})" if exc.lineno else "")
        ) from None
    except ValueError as exc:
        raise AppError(f"cannot load app {spec}: {exc}") from None


def apply_settings(old: Settings, new: Settings, logger: logging.Logger) -> None:
    """What changes for the master itself when the settings change."""
    if new.log_file != old.log_file and new.log_file:
        error = log.reopen(new.log_file)
        if error:
            logger.error("%s", error)
    if new.pid != old.pid:
        if old.pid:
            pidfile.remove_if_ours(old.pid, os.getpid())
        if new.pid:
            write_pid_file(new.pid, logger)
    if new.listen != old.listen:
        logger.warning("listen addresses changed: they take effect on USR2 (re-exec)")
    if new.control != old.control:
        logger.warning("control socket changed: it takes effect on USR2 (re-exec)")
    if new.subreaper and not old.subreaper:
        become_subreaper(logger)


def write_pid_file(path: str, logger: logging.Logger) -> None:
    try:
        pidfile.write(path, os.getpid())
    except OSError as exc:
        logger.error("cannot write pid file %s: %s", path, exc.strerror or exc)


def become_subreaper(logger: logging.Logger) -> None:
    if linux.set_child_subreaper():
        logger.info("child subreaper: orphaned descendants of workers are reaped here")
    else:
        logger.error("--subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed")
