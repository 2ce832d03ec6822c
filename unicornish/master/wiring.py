"""Building the master's components and connecting them, once, at start.

Everything is built in an order where each component gets only what exists
already: the `State` first (the facts every duty reads through its `View`),
then the record of children and the ways to fork and stop them, the pool
and what changes its count, readiness and USR2, the reloader, the reforker,
the stop, the metrics, and last the duties in the order the loop runs them.
Where two components call each other (the pool tells the reforker a worker
is warm; the reforker asks the reloader for a new generation), the later one
is connected to the earlier one's hook once both exist: no getter into an
object built later.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from unicornish import __version__
from unicornish import app as app_module
from unicornish.app import App
from unicornish.config import Settings
from unicornish.ctl.server import Commands, ControlServer
from unicornish.host import titles as proctitle
from unicornish.host.privileges import Identity
from unicornish.host.systemd import Notifier, Watchdog
from unicornish.master.autoscale import Autoscaler, handover
from unicornish.master.children import Children, Stopper
from unicornish.master.deaths import Deaths
from unicornish.master.eventloop import EventLoop
from unicornish.master.moldlink import new_address
from unicornish.master.pool import Pool
from unicornish.master.readiness import Readiness
from unicornish.master.reaping import Reaper
from unicornish.master.recycle import GiveUp, MemoryLimit
from unicornish.master.refork import Reforker
from unicornish.master.reload import Reloader, apply_settings
from unicornish.master.shutdown import Shutdown
from unicornish.master.spares import Spares
from unicornish.master.spawner import Release, Spawner
from unicornish.master.state import State
from unicornish.master.timeouts import Timeouts
from unicornish.master.upgrade import Upgrade, handed_count
from unicornish.metrics.appcollector import AppMetrics
from unicornish.metrics.families import MasterCollector, Metrics, Tallies
from unicornish.scoreboard import Scoreboard

Duty = Callable[[float], "float | None"]


@dataclass
class Parts:
    """What the loop, its signal table and the control socket's commands use."""

    state: State
    loop: EventLoop
    notifier: Notifier
    children: Children
    stopper: Stopper
    pool: Pool
    autoscale: Autoscaler
    readiness: Readiness
    upgrade: Upgrade
    reloader: Reloader
    reforker: Reforker
    shutdown: Shutdown
    control: ControlServer | None
    metrics: Metrics
    reaper: Reaper
    duties: list[tuple[str, Duty]]


def build(
    master: Commands,
    log: logging.Logger,
    settings: Settings,
    cli_values: dict[str, Any],
    app: App | None,
    listeners: list[socket.socket],
    identity: Identity | None,
    ready_fd: int | None,
    control_sock: socket.socket | None,
    metrics_sock: socket.socket | None,
) -> Parts:
    """`master` answers the control socket and is what `before_exec` hooks get."""
    pid = os.getpid()
    release = Release(settings, app, identity, app_module.describe(settings.app_spec))
    state = State(release, settings.workers)
    loop = EventLoop()
    notifier = Notifier()
    children = Children()
    stopper = Stopper(log, children)

    # The pool, its spares and how they are forked.
    report_r, report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    loop.close_in_child(functools.partial(os.close, report_r))
    create_time = psutil.Process(pid).create_time()
    address = new_address(pid)
    spawner = Spawner(loop, log, pid, create_time, listeners, report_w, address)
    pool = Pool(children, spawner, stopper, log, state)
    loop.add_reader(report_r, functools.partial(pool.read_reports, report_r))
    spares = Spares(spawner, stopper, pool.backoff, children, log, state)
    pool.spares = spares
    loop.close_in_child(spares.close_in_child)
    autoscale = Autoscaler(children.workers, log, state, pool.scale)
    handed = handed_count(log)  # USR2: the count the old master had
    if handed is not None:
        wanted, bounds, old_pid = handed
        pool.scale(autoscale.take_over(wanted, bounds, settings))
        low, high = autoscale.bounds()
        log.info(
            "workers: %d wanted (%d:%d), as old master pid=%d had them; HUP goes back "
            "to the configured count",
            state.wanted,
            low,
            high,
            old_pid,
        )

    # Readiness (systemd, -D) and USR2.
    readiness = Readiness(children.workers, notifier, log, state, ready_fd)
    loop.close_in_child(readiness.close_in_child)

    def set_title(old: bool) -> None:
        proctitle.set_master_title(state.settings.app_spec, listeners, old=old)

    def before_exec() -> None:
        for hook in state.release.hooks("before_exec"):
            try:
                hook(master)
            except BaseException:  # noqa: BLE001 - not even sys.exit() in the hook kills the master
                log.exception("before_exec failed")

    upgrade = Upgrade(
        log, notifier, listeners, state, readiness.status_line, set_title, before_exec
    )
    readiness.announce = upgrade.announce_ready
    upgrade.hand_over = lambda: handover(state.settings, autoscale.policy, state.wanted)

    def switched(old: Release, new: Release) -> None:
        """What changes for the master itself with a new release."""
        apply_settings(old.settings, new.settings, log)
        before = autoscale.policy  # as TTIN/TTOU or `ctl scale` left it
        autoscale.configure(new.settings)
        adaptive = autoscale.describe()
        if adaptive and autoscale.policy != before:
            log.info("%s", adaptive)
        if new.settings.app_spec != old.settings.app_spec:
            proctitle.set_master_title(new.settings.app_spec, listeners, upgrade.is_old)
        readiness.announced = False

    reloader = Reloader(state, cli_values, pool, stopper, notifier, log, switched)
    reforker = Reforker(loop, log, children, stopper, address, state, reloader.refork)
    pool.on_warm = reforker.warm
    spawner.mold_failed = reforker.mold_failed
    reloader.on_settled = reforker.settled
    reloader.on_reload = reforker.reset

    def stop_others(now: float, quick: bool, wait: float) -> None:
        """What a stop does besides the workers: spares and molds."""
        spares.stop_all(now, quick, wait)
        reforker.stop_all(now, quick, wait)

    shutdown = Shutdown(log, notifier, stopper, children.workers, stop_others, state)
    control: ControlServer | None = None
    if control_sock is not None and settings.control:
        control = ControlServer(loop, log, master, control_sock, settings.control)
        upgrade.control = control

    # Counts kept as things happen, the collectors, and with --metrics the HTTP
    # endpoint (prometheus_client is imported only then, or on the first `ctl metrics`).
    tallies = Tallies()
    # Workers forked from now on record task durations only if they can be read.
    Scoreboard.record_durations = metrics_sock is not None or control is not None
    reloader.on_result = functools.partial(tallies.count, "reloads")
    upgrade.on_result = functools.partial(tallies.count, "upgrades")
    # The apps' own metrics, summed over workers and kept across their deaths,
    # and deaths by cause.
    app_metrics = AppMetrics(children.served, log)
    deaths = Deaths()  # reads the cgroup's OOM-kill count now, at start
    collector = MasterCollector(children, state, pool.held_back, listeners, tallies, __version__)
    metrics = Metrics([collector, app_metrics, deaths], tallies)
    if metrics_sock is not None:
        from unicornish.metrics.endpoint import Endpoints, MetricsServer

        endpoints = Endpoints(metrics.render, readiness.reason, log)
        metrics.server = MetricsServer(loop, log, metrics_sock, endpoints)
        upgrade.metrics = metrics.server
        upgrade.metrics_fd = metrics_sock.fileno()

    give_up = GiveUp(
        children.workers,
        log,
        state,
        lambda: shutdown.stop(
            True,
            f"no worker stayed up for {state.settings.give_up_after:g}s, giving up",
            1,
            received=False,
        ),
        time.monotonic(),
    )
    reaper = Reaper(
        log,
        state,
        children,
        deaths,
        tallies,
        app_metrics,
        pool,
        spares,
        reforker,
        reloader,
        readiness,
        give_up,
        upgrade,
        shutdown.stop,
    )
    workers = children.workers
    # In this order: a duty may change what a later one sees (a reload, the
    # pool's stops), and the stop deadlines are looked at last. Draining
    # workers still serve: --timeout, --max-memory and respawns go on.
    duties: list[tuple[str, Duty]] = [
        ("drain", shutdown.tick),
        ("pending reload", reloader.tick),
        # Before the pool: the count it decides is acted on in the same turn.
        ("autoscale", autoscale.tick),
        ("pool", pool.tick),
        ("spares", spares.tick),
        ("timeouts", Timeouts(workers, stopper, log, state).tick),
        ("max-memory", MemoryLimit(workers, stopper, log, state).tick),
        ("give-up", give_up.tick),
        ("readiness", readiness.tick),
        ("watchdog", Watchdog(notifier, state).tick),
        ("scale log", pool.scale_log.tick),
        ("refork", reforker.tick),
    ]
    if control is not None:
        duties.append(("control", control.tick))
    if metrics.server is not None:
        duties.append(("metrics", metrics.server.tick))
    duties.append(("stop deadlines", stopper.tick))
    return Parts(
        state,
        loop,
        notifier,
        children,
        stopper,
        pool,
        autoscale,
        readiness,
        upgrade,
        reloader,
        reforker,
        shutdown,
        control,
        metrics,
        reaper,
        duties,
    )
