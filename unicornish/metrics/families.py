"""The master's own figures for Prometheus, and the exposition of every collector.

The contract with every source of metrics (the master's figures, app metrics,
deaths by cause) is one method, `own_families() -> Iterable[Family]`, the
families unicornish.metrics.exposition writes. `Exposition` renders them all,
in the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scraper's
Accept header asks for it. No prometheus_client: it wrote the apps' metrics
and the deaths until 0.x, and its writers cost more per scrape than ours
(bench/exposition.py), and a package to install for --metrics.

What is counted where it happens (`Tallies`, fed by small callbacks), and
what is read at scrape time only: scoreboard states and task counts (shared
memory, no syscall), per-worker memory (psutil, /proc), the accept queues of
TCP listeners (TCP_INFO). Nothing here runs between scrapes.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import psutil

from unicornish.host import log as log_module
from unicornish.host import sockets as sockets_module
from unicornish.host.log import Throttled
from unicornish.metrics.exposition import (
    COUNTER,
    EOF,
    GAUGE,
    HISTOGRAM,
    INFO,
    Family,
    label_text,
    write,
)
from unicornish.protocol import TASK_DURATION_BUCKETS
from unicornish.scoreboard import BOOTING, BUSY, DURATION_SLOTS, IDLE, Scoreboard

OPENMETRICS = "application/openmetrics-text"
OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"

RELOAD_RESULTS = ("done", "failed")
UPGRADE_RESULTS = ("started", "refused", "failed")


# What the figures read of the master (its record of children and its count),
# as protocols: the master's objects fit them, and this layer stays below it.


class Child(Protocol):
    @property
    def nr(self) -> int: ...  # -1: a spare

    @property
    def pid(self) -> int: ...

    @property
    def board(self) -> Scoreboard: ...

    @property
    def spawned_at(self) -> float: ...


class Children(Protocol):
    def served(self) -> Iterable[Child]:
        """Workers and molds, stopping ones included."""
        ...

    def live_workers(self) -> Sequence[Child]: ...

    def spare_count(self) -> int: ...


class Count(Protocol):
    @property
    def wanted(self) -> int: ...


class Collector(Protocol):
    """A source of metric families, written by unicornish.metrics.exposition.
    One may also have `dropped`: {reason: series it left out so far}."""

    def own_families(self) -> Iterable[Family]: ...


UNWRITABLE = "unwritable"
DROP_REASONS = (UNWRITABLE, "bad_arena", "bad_value")


class Exposition:
    """Every collector's families, rendered in the format a scraper asks for."""

    def __init__(
        self, collectors: Iterable[Collector] = (), log: logging.Logger | None = None
    ) -> None:
        self.collectors: list[Collector] = list(collectors)
        self.unwritable = 0  # series left out so far, their text not encodable
        self.throttled = Throttled(log or log_module.get_logger())

    def register(self, collector: Collector) -> None:
        self.collectors.append(collector)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scraper that sent this Accept header.
        A series whose text cannot be written is left out, logged and counted:
        never the whole scrape."""
        openmetrics = OPENMETRICS in accept
        written = write((f for c in self.collectors for f in c.own_families()), openmetrics)
        if written.example:
            self.unwritable += written.dropped
            self.throttled.warn(
                UNWRITABLE,
                f"metrics: {written.dropped} series left out of a scrape: their text cannot "
                f"be written (not valid UTF-8), in {written.example} first",
            )
        tail = write([self.dropped_family()], openmetrics).body
        if openmetrics:
            return written.body + tail + EOF.encode(), OPENMETRICS_1_0_0
        return written.body + tail, TEXT_0_0_4

    def dropped_family(self) -> Family:
        """Written last, so that it counts what this very scrape left out."""
        counts = dict.fromkeys(DROP_REASONS, 0)
        counts[UNWRITABLE] = self.unwritable
        for collector in self.collectors:
            for reason, n in getattr(collector, "dropped", {}).items():
                counts[reason] = counts.get(reason, 0) + n
        family = Family(
            "unicornish_metrics_dropped_series",
            COUNTER,
            "Series left out of scrapes (each scrape counts them again), by reason: text "
            "that cannot be written, a worker's app metrics memory that breaks a rule, "
            "a value no counter or histogram can have",
        )
        for reason, n in counts.items():
            family.add(n, _REASON, (reason,))
        return family


# -- what the master counts as it goes --------------------------------------------------


class Tallies:
    """Counts kept where things happen (small callbacks, no log parsing), read at
    scrape time. Counters never go down: a replaced worker's tasks stay in its slot."""

    def __init__(self) -> None:
        self.reaped_tasks: dict[int, int] = {}  # nr -> tasks of its reaped workers
        self.events: dict[tuple[str, str], int] = {}  # (what, result) -> count
        # The reaped workers' task duration buckets and sum (Scoreboard.task_durations).
        self.reaped_durations = [0.0] * DURATION_SLOTS

    def worker_reaped(self, nr: int, tasks: int, durations: Iterable[float] = ()) -> None:
        if nr >= 0:  # not a spare
            self.reaped_tasks[nr] = self.reaped_tasks.get(nr, 0) + tasks
            for k, value in enumerate(durations):
                self.reaped_durations[k] += value

    def count(self, what: str, result: str) -> None:
        self.events[(what, result)] = self.events.get((what, result), 0) + 1

    def tasks_by_slot(self, procs: Iterable[Child]) -> dict[int, int]:
        """Per slot: the reaped workers' tasks plus the live ones' (stopping included)."""
        totals = dict(self.reaped_tasks)
        for w in procs:
            if w.nr >= 0:
                totals[w.nr] = totals.get(w.nr, 0) + w.board.task_count()
        return totals

    def task_durations(self, procs: Iterable[Child]) -> list[float]:
        """The reaped workers' buckets and sum plus the live ones' (stopping included)."""
        rows = [w.board.task_durations() for w in procs if w.nr >= 0]
        rows.append(self.reaped_durations)
        return [sum(column) for column in zip(*rows, strict=True)]


# -- the kernel's accept queue of a TCP listener ------------------------------------------

# struct tcp_info, as far as this reads it: 8 u8 fields (state first), then u32
# fields: rto, ato, snd_mss, rcv_mss, unacked, sacked, ... 104 bytes is the
# size every Linux since 2.6 fills at least.
TCP_INFO_SIZE = 104
_TCP_INFO_HEAD = struct.Struct("=8B6I")
TCP_LISTEN = 10  # include/net/tcp_states.h


def decode_tcp_info(raw: bytes) -> tuple[int, int] | None:
    """(accept queue length, its limit) from a listening socket's TCP_INFO: on
    Linux, tcpi_unacked is the current accept queue and tcpi_sacked the backlog.
    None when `raw` is too short or not a listening socket's."""
    if len(raw) < _TCP_INFO_HEAD.size:
        return None
    fields = _TCP_INFO_HEAD.unpack_from(raw)
    if fields[0] != TCP_LISTEN:
        return None
    return fields[8 + 4], fields[8 + 5]


def accept_queue(sock: socket.socket) -> tuple[int, int] | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except OSError:
        return None
    return decode_tcp_info(raw)


def listener_name(sock: socket.socket) -> str:
    try:
        return sockets_module.socket_address(sock)
    except OSError:
        return f"fd={sock.fileno()}"


# -- the master's collector ------------------------------------------------------------------


# USS and PSS make the kernel walk every page a worker maps (/proc/PID/smaps_rollup):
# about 1 ms each, a quarter of a second for 256 workers, far too long for the
# master's loop. RSS is one small read (/proc/PID/statm). So each scrape reads
# every worker's RSS, and USS and PSS of as many workers as fit in this much
# time, the longest unread first; the others repeat their last figures.
DEEP_MEMORY_BUDGET = 0.005
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def read_rss(pid: int) -> int | None:
    """Resident bytes from /proc/PID/statm: what psutil's memory_info().rss reads,
    without its per-call overhead (3 ms instead of 11 ms for 256 workers)."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fields = os.read(fd, 256).split()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(fields[1]) * PAGE_SIZE if len(fields) > 1 else None


class MemoryReader:
    """Per-worker memory at scrape time, with the USS/PSS budget above."""

    def __init__(self, budget: float = DEEP_MEMORY_BUDGET) -> None:
        self.budget = budget
        # psutil.Process(pid) reads /proc/PID/stat: made once per worker, not per scrape.
        self.procs: dict[int, psutil.Process] = {}
        self.deep: dict[int, tuple[float, int, int]] = {}  # pid -> (read at, uss, pss)

    def read(self, pids: list[int]) -> dict[int, tuple[int, int | None, int | None]]:
        """pid -> (rss, uss, pss) in bytes; uss and pss None until first read.
        A process gone or not ours to read is left out."""
        wanted = set(pids)
        for gone in [pid for pid in self.procs if pid not in wanted]:
            del self.procs[gone]
            self.deep.pop(gone, None)
        rss: dict[int, int] = {}
        for pid in pids:
            value = read_rss(pid)
            if value is not None:
                rss[pid] = value
        started = time.monotonic()
        for pid in sorted(rss, key=lambda pid: self.deep.get(pid, (-1.0, 0, 0))[0]):
            now = time.monotonic()
            if now - started >= self.budget:
                break
            try:
                if pid not in self.procs:
                    self.procs[pid] = psutil.Process(pid)
                full = self.procs[pid].memory_full_info()
            except psutil.Error:
                continue
            self.deep[pid] = (now, int(full.uss), int(getattr(full, "pss", 0)))
        return {
            pid: (value, *(self.deep[pid][1:] if pid in self.deep else (None, None)))
            for pid, value in rss.items()
        }


_NR = ("nr",)
_LISTENER = ("listener",)
_RESULT = ("result",)
_REASON = ("reason",)


class MasterCollector:
    """unicornish_* figures of the master, its workers and its listeners, as
    unicornish.metrics.exposition families (written without prometheus_client)."""

    def __init__(
        self,
        children: Children,
        count: Count,
        held_back: Callable[[float], int],
        listeners: list[socket.socket],
        tallies: Tallies,
        version: str,
    ) -> None:
        # A mold's tasks stay in its slot's count until it is reaped, as a worker's do.
        self.children = children
        self.count = count
        self.held_back = held_back
        self.listeners = listeners
        self.tallies = tallies
        self.version = version
        self.start_time = time.time()
        self.memory = MemoryReader()

    def own_families(self) -> Iterator[Family]:
        info = Family("unicornish_build", INFO, "unicornish's version")
        info.add(1, ("version",), (self.version,))
        yield info
        yield _one(
            "unicornish_master_start_time_seconds",
            "When the master started, in seconds since the epoch",
            self.start_time,
        )
        live = self.children.live_workers()
        states = [int(w.board.state[0]) for w in live]
        for name, help_text, value in (
            ("wanted", "Workers the master keeps (after TTIN/TTOU/scale)", self.count.wanted),
            ("running", "Workers running and not asked to stop, booting ones included", len(live)),
            ("busy", "Running workers in a task", states.count(BUSY)),
            ("idle", "Running workers between tasks (waiting in accept())", states.count(IDLE)),
            ("booting", "Running workers before their first task", states.count(BOOTING)),
        ):
            yield _one(f"unicornish_workers_{name}", help_text, value)
        spares = self.children.spare_count()
        yield _one("unicornish_spares", "Booted standby processes (--spares)", spares)
        yield _one(
            "unicornish_crash_backoff_slots",
            "Worker slots held back by the crash-loop backoff right now",
            self.held_back(time.monotonic()),
        )
        tasks = Family(
            "unicornish_worker_tasks_completed",
            COUNTER,
            "Tasks completed in a worker slot, by all its workers so far",
        )
        name = tasks.sample_name()
        for nr, total in sorted(self.tallies.tasks_by_slot(self.children.served()).items()):
            tasks.add_line(name, label_text(_NR, (str(nr),)), total)
        yield tasks
        durations = Family(
            "unicornish_task_duration_seconds",
            HISTOGRAM,
            "Time each task took (worker_start calls; waits in accept() and idle() left out)",
        )
        figures = self.tallies.task_durations(self.children.served())
        durations.add_histogram(TASK_DURATION_BUCKETS, figures[:-1], figures[-1])
        yield durations
        for what, results, help_text in (
            ("reloads", RELOAD_RESULTS, "Reloads (HUP, ctl reload) by result"),
            ("upgrades", UPGRADE_RESULTS, "Re-execs of a new master (USR2, ctl upgrade) by result"),
        ):
            counter = Family(f"unicornish_{what}", COUNTER, help_text)
            for result in results:
                counter.add(self.tallies.events.get((what, result), 0), _RESULT, (result,))
            yield counter
        yield from self.memory_metrics(live)
        yield from self.listener_metrics()

    def memory_metrics(self, live: Iterable[Child]) -> Iterator[Family]:
        # One series per slot: during a reload an old and a new worker share an nr,
        # and the newest is the one that stays.
        newest: dict[int, Child] = {}
        for w in live:
            if w.nr >= 0 and (w.nr not in newest or w.spawned_at > newest[w.nr].spawned_at):
                newest[w.nr] = w
        families = [
            Family(f"unicornish_worker_memory_{kind}_bytes", GAUGE, help_text)
            for kind, help_text in (
                ("rss", "Resident memory of the worker in the slot (shared pages included)"),
                ("uss", "Memory only the worker in the slot uses (freed when it exits)"),
                ("pss", "Resident memory with shared pages divided among their sharers"),
            )
        ]
        figures = self.memory.read([w.pid for w in newest.values()])
        for nr in sorted(newest):
            found = figures.get(newest[nr].pid)
            if found is None:
                continue
            labels = label_text(_NR, (str(nr),))
            for family, value in zip(families, found, strict=True):
                if value is not None:
                    family.add_line(family.name, labels, value)
        yield from families

    def listener_metrics(self) -> Iterator[Family]:
        queue = Family(
            "unicornish_listener_accept_queue",
            GAUGE,
            "Connections the kernel holds for a TCP listener, not yet accepted by a worker",
        )
        limit = Family(
            "unicornish_listener_accept_queue_limit",
            GAUGE,
            "The most connections the kernel queues for a TCP listener (its backlog)",
        )
        for sock in self.listeners:
            found = accept_queue(sock)
            if found is not None:
                name = (listener_name(sock),)
                queue.add(found[0], _LISTENER, name)
                limit.add(found[1], _LISTENER, name)
        yield queue
        yield limit


def _one(name: str, help_text: str, value: float) -> Family:
    family = Family(name, GAUGE, help_text)
    family.add(value)
    return family


class Metrics:
    """Everything the master exposes: its collectors, rendered for /metrics and
    `ctl metrics`, and with --metrics the HTTP endpoint that serves them."""

    def __init__(
        self,
        collectors: list[Collector],
        tallies: Tallies,
        server: Any = None,
    ) -> None:
        self.tallies = tallies
        self.server = server  # endpoint.MetricsServer, or None without --metrics
        self.exposition = Exposition(collectors)

    def add_collector(self, collector: Collector) -> None:
        """Another source of metrics (anything with own_families())."""
        self.exposition.register(collector)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        return self.exposition.render(accept)

    def text(self) -> str:
        return self.render()[0].decode()
