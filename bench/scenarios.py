"""The nine scenarios of issue 6, and 10 (adaptive count, issue 16). Each returns a
list of table rows plus raw data.

A row compares one figure across the peers: `values` maps a peer to a number,
or to a string saying why there is none ("n/a: ...", "not installed",
"error: ..."). All timings come from the workers' own readiness messages
(their CLOCK_MONOTONIC) and time.monotonic() here, or from pidfds turning
readable when a process exits.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import (
    BenchError,
    children_of,
    cpu_seconds,
    percentile,
    pidfd,
    ready_pids,
    summary,
    wait_exits,
)
from servers import APPS, GRACEFUL, PEERS, Launcher, Master, base_env

Value = float | str


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    values: dict[str, Value]
    better: str = "lower"  # or "higher"
    target: str = ""
    met: bool | None = None
    # The ratio is unicornish / the better peer, unless this names a baseline column.
    baseline: str | None = None
    note: str = ""
    compare: bool = True  # False: a fact about each peer (e.g. its heap), not a contest

    def ratio(self) -> float | None:
        mine = self.values.get("unicornish")
        if not self.compare or not isinstance(mine, (int, float)):
            return None
        if self.baseline:
            other = self.values.get(self.baseline)
            others = [other] if isinstance(other, (int, float)) else []
        else:
            others = [v for p, v in self.values.items() if p != "unicornish" and _num(v)]
        if not others:
            return None
        best = min(others) if self.better == "lower" else max(others)
        if best == 0:
            return None if mine else 1.0
        return mine / best

    def best_peer(self) -> float | None:
        others = [v for p, v in self.values.items() if p != "unicornish" and _num(v)]
        if not others:
            return None
        return min(others) if self.better == "lower" else max(others)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Ctx:
    launcher: Launcher
    avail: dict[str, str | None]
    quick: bool
    log: Callable[[str], None]
    raw: dict[str, Any] = field(default_factory=dict)

    def peers(self, *which: str) -> list[str]:
        return [p for p in (which or PEERS) if self.avail.get(p) is None]

    def missing(self, peer: str) -> str | None:
        return self.avail.get(peer)


def _err(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "error: " + text[:60]


def _report_error(ctx: Ctx, what: str, exc: BaseException) -> None:
    ctx.log(f"  !! {what}: {exc}")
    if not isinstance(exc, BenchError):
        ctx.log(traceback.format_exc())


def _fill_missing(ctx: Ctx, values: dict[str, Value], na: dict[str, str] | None = None) -> None:
    for p in PEERS:
        if p in values:
            continue
        if na and p in na:
            values[p] = "n/a: " + na[p]
        elif ctx.missing(p):
            values[p] = "not installed"


def _stat_rows(
    scenario: str, label: str, unit: str, samples: dict[str, list[float] | str], scale: float
) -> list[Row]:
    """Three rows (p50, p90, max) from per-peer samples (or a reason string).

    One row only, without the statistic in its name, when no peer has more
    than one sample.
    """
    rows = []
    single = all(isinstance(xs, str) or len(xs) <= 1 for xs in samples.values())
    for stat in ("p50",) if single else ("p50", "p90", "max"):
        vals: dict[str, Value] = {}
        for peer, xs in samples.items():
            if isinstance(xs, str):
                vals[peer] = xs
            elif xs:
                vals[peer] = summary(xs)[stat] * scale
            else:
                vals[peer] = "error: no samples"
        rows.append(Row(scenario, label if single else f"{label} {stat}", unit, vals))
    return rows


def _target_max(rows: list[Row], text: str, limit: float) -> None:
    """The target applies to the worst case: the max row (or the only row)."""
    row = rows[-1]
    row.target = text
    v = row.values.get("unicornish")
    row.met = (v <= limit) if _num(v) else None  # type: ignore[operator]


def _settle(seconds: float = 0.3) -> None:
    time.sleep(seconds)


# -- 1. respawn ------------------------------------------------------------------------------


def respawn_once(
    ctx: Ctx, peer: str, preload: bool, kills: int, spares: int = 0
) -> tuple[list[float], list[float]]:
    """(latencies, victim exit times): SIGKILL to replacement ready, SIGKILL to victim gone.

    The second tells the kernel's share (tearing the victim down, which comes
    before any SIGCHLD) from the master's and the new worker's.
    """
    L = ctx.launcher
    m = L.start(peer, 4, preload=preload, spares=spares)
    try:
        live = set(L.wait_ready(m, 4, timeout=60))
        seen = set(live)
        _settle(0.5)
        lat = []
        gone = []
        for i in range(kills):
            victim = sorted(live)[i % len(live)]
            idx = len(m.msgs())
            fd = {victim: pidfd(victim)}
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            t_exit = wait_exits(fd, 10)[victim]
            if t_exit:
                gone.append(t_exit - t0)
            got = L.wait_ready(m, 1, since=idx, timeout=30)
            new = [(t, p) for p, t in got.items() if p not in seen]
            if not new:
                raise BenchError(f"{peer}: a known pid announced again")
            t, pid = min(new)
            lat.append(t - t0)
            live.discard(victim)
            live.add(pid)
            seen.add(pid)
            _settle(0.1)
        return lat, gone
    finally:
        L.stop(m)


def _half_of_better_peer(p50: Row) -> None:
    """The respawn target: unicornish's p50 at most half of the better peer's."""
    best = p50.best_peer()
    mine = p50.values.get("unicornish")
    p50.target = "<= 0.5 x better peer"
    if _num(mine) and best is not None:
        p50.met = mine <= 0.5 * best


def s1_respawn(ctx: Ctx) -> list[Row]:
    kills = 10 if ctx.quick else 50
    rows: list[Row] = []
    ctx.raw["respawn"] = {}
    for preload in (False, True):
        label = "preload" if preload else "no preload"
        samples: dict[str, list[float] | str] = {}
        exits: dict[str, list[float] | str] = {}
        for peer in PEERS:
            if ctx.missing(peer):
                samples[peer] = exits[peer] = "not installed"
                continue
            ctx.log(f"1 respawn [{label}] {peer}: {kills} x SIGKILL one of 4 workers")
            try:
                samples[peer], exits[peer] = respawn_once(ctx, peer, preload, kills)
            except (BenchError, OSError) as exc:
                _report_error(ctx, f"respawn {peer}", exc)
                samples[peer] = exits[peer] = _err(exc)
        ctx.raw["respawn"][label] = {
            p: (
                {
                    "samples_s": v,
                    **summary(v),
                    "victim_exit_s": exits[p],
                    "victim_exit_p50": summary(exits[p])["p50"],  # type: ignore[arg-type]
                }
                if isinstance(v, list)
                else v
            )
            for p, v in samples.items()
        }
        part = _stat_rows("1 respawn", label, "ms", samples, 1000.0)
        ex = _stat_rows("1 respawn", f"{label}: of which victim exit", "ms", exits, 1000.0)[0]
        ex.compare = False
        ex.note = (
            "'of which victim exit': SIGKILL until the killed worker is gone (kernel teardown,"
            " before any SIGCHLD), the part no master can shorten"
        )
        _half_of_better_peer(part[0])
        rows += part + [ex]
        # The same, with one booted spare standing by (unicornish --spares 1).
        if not ctx.missing("unicornish"):
            ctx.log(f"1 respawn [{label}] unicornish --spares 1: {kills} x SIGKILL")
            with_spare = dict(samples)
            try:
                with_spare["unicornish"], _ = respawn_once(ctx, "unicornish", preload, kills, 1)
            except (BenchError, OSError) as exc:
                _report_error(ctx, "respawn unicornish --spares 1", exc)
                with_spare["unicornish"] = _err(exc)
            ctx.raw["respawn"][f"{label}, --spares 1"] = {
                "unicornish": with_spare["unicornish"]
                if not isinstance(with_spare["unicornish"], list)
                else {"samples_s": with_spare["unicornish"], **summary(with_spare["unicornish"])}
            }
            spare_rows = _stat_rows("1 respawn", f"{label}, --spares 1", "ms", with_spare, 1000.0)
            _half_of_better_peer(spare_rows[0])
            rows += spare_rows
    return rows


# -- 2 and 3. cold start, respawn storm --------------------------------------------------


def s2_s3_cold_start_and_storm(ctx: Ctx) -> list[Row]:
    L = ctx.launcher
    sizes = (4, 32, 256)
    reps = {4: 1, 32: 1, 256: 1} if ctx.quick else {4: 5, 32: 3, 256: 3}
    cold: dict[int, dict[str, list[float] | str]] = {n: {} for n in sizes}
    storm: dict[str, list[float] | str] = {}
    for peer in PEERS:
        if ctx.missing(peer):
            for n in sizes:
                cold[n][peer] = "not installed"
            storm[peer] = "not installed"
            continue
        for n in sizes:
            cold[n][peer] = []
            for rep in range(reps[n]):
                ctx.log(f"2 cold start {peer}: {n} workers (run {rep + 1}/{reps[n]})")
                m = None
                try:
                    m = L.start(peer, n)
                    got = L.wait_ready(m, n, timeout=60 + n * 0.5)
                    cold[n][peer].append(max(got.values()) - m.t_launch)  # type: ignore[union-attr]
                    if n == 256:
                        ctx.log(f"3 respawn storm {peer}: SIGKILL all {n} workers")
                        _settle(0.5 if ctx.quick else 1.0)
                        t = _storm(ctx, m, list(got), n)
                        if not isinstance(storm.get(peer), list):
                            storm[peer] = []
                        storm[peer].append(t)  # type: ignore[union-attr]
                except (BenchError, OSError) as exc:
                    _report_error(ctx, f"cold start/storm {peer} n={n}", exc)
                    if not cold[n][peer]:
                        cold[n][peer] = _err(exc)
                    if n == 256 and not isinstance(storm.get(peer), list):
                        storm[peer] = _err(exc)
                    break
                finally:
                    if m is not None:
                        L.stop(m)
                        _settle(0.5)
    ctx.raw["cold_start"] = {
        str(n): {
            p: ({"samples_s": v, **summary(v)} if isinstance(v, list) else v)
            for p, v in cold[n].items()
        }
        for n in sizes
    }
    ctx.raw["respawn_storm"] = {
        p: ({"samples_s": v, **summary(v)} if isinstance(v, list) else v) for p, v in storm.items()
    }
    rows: list[Row] = []
    for n in sizes:
        part = _stat_rows("2 cold start", f"{n} workers", "ms", cold[n], 1000.0)
        if n == 256:
            _target_max(part, "< 3000 ms", 3000)
        rows += part
    part = _stat_rows("3 respawn storm", "256 workers", "ms", storm, 1000.0)
    _target_max(part, "< 3000 ms", 3000)
    rows += part
    return rows


def _storm(ctx: Ctx, m: Master, pids: list[int], n: int) -> float:
    idx = len(m.msgs())
    t0 = time.monotonic()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    got = ctx.launcher.wait_ready(m, n, since=idx, timeout=120)
    fresh = [t for p, t in got.items() if p not in set(pids)]
    if len(fresh) < n:
        raise BenchError("an old worker announced again")
    return max(fresh) - t0


# -- 4. scale up ---------------------------------------------------------------------------


def s4_scale_up(ctx: Ctx) -> list[Row]:
    L = ctx.launcher
    reps = 1 if ctx.quick else 5
    samples: dict[str, list[float] | str] = {}
    for peer in PEERS:
        if ctx.missing(peer):
            samples[peer] = "not installed"
            continue
        samples[peer] = []
        for rep in range(reps):
            ctx.log(f"4 scale up {peer}: 8 x TTIN on 4 workers (run {rep + 1}/{reps})")
            m = L.start(peer, 4)
            try:
                first = L.wait_ready(m, 4, timeout=60)
                _settle(0.5)
                base = len(children_of(m.pid))
                idx = len(m.msgs())
                t0 = time.monotonic()
                for k in range(1, 9):
                    m.signal(signal.SIGTTIN)
                    # The next TTIN goes only once this one has made the master fork:
                    # then no two can coalesce (in the kernel or in the interpreter).
                    end = time.monotonic() + 10
                    while len(children_of(m.pid)) < base + k:
                        if time.monotonic() > end:
                            raise BenchError(f"{peer}: TTIN #{k} made no new worker in 10 s")
                        time.sleep(0.001)
                got = L.wait_ready(m, 8, since=idx, timeout=60)
                new = [t for p, t in got.items() if p not in first]
                samples[peer].append(max(new) - t0)  # type: ignore[union-attr]
            except (BenchError, OSError) as exc:
                _report_error(ctx, f"scale up {peer}", exc)
                if not samples[peer]:
                    samples[peer] = _err(exc)
                break
            finally:
                L.stop(m)
    ctx.raw["scale_up"] = {
        p: ({"samples_s": v, **summary(v)} if isinstance(v, list) else v)
        for p, v in samples.items()
    }
    return _stat_rows("4 scale up", "8 TTIN", "ms", samples, 1000.0)


# -- 5. idle master --------------------------------------------------------------------------

# System calls that put a thread to sleep: their return is a wake-up.
_WAITS = {
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "futex",
    "nanosleep",
    "clock_nanosleep",
    "wait4",
    "waitid",
    "read",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "pause",
    "accept",
    "accept4",
    "recvfrom",
    "recvmsg",
    "io_uring_enter",
}
_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*?)(?:<([\d.]+)>)?$")


def parse_strace(path: str) -> dict[str, Any]:
    """Syscalls that completed during the window, and the wake-ups among them.

    Counted: complete lines and '<... resumed>' lines (a syscall that returned
    while we watched). The call a thread sat in when strace attached shows as
    '<unfinished ...>' first and is counted when (if) it returns - that is a
    real wake-up. A wake-up is the return of a waiting call that slept > 5 ms.
    """
    counts: dict[str, int] = {}
    wakes: list[tuple[float, str, float]] = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if "<unfinished ...>" in line or "<detached ...>" in line:
                continue
            mt = _LINE.match(line)
            if not mt:
                continue
            name = mt.group(3) or mt.group(4)
            if name in ("exit", "exit_group", "+++", "---"):
                continue
            counts[name] = counts.get(name, 0) + 1
            dur = float(mt.group(6)) if mt.group(6) else 0.0
            if name in _WAITS and dur > 0.005:
                start = float(mt.group(2))
                wakes.append((start + dur if mt.group(4) else start, name, dur))
    return {"counts": counts, "total": sum(counts.values()), "wakeups": sorted(wakes)}


def s5_idle_master(ctx: Ctx) -> list[Row]:
    L = ctx.launcher
    window = 4.0 if ctx.quick else 20.0
    strace = shutil.which("strace")
    configs = [("default", None), ("--timeout 30", 30)]
    masters: dict[tuple[str, str], Master] = {}
    result: dict[str, dict[str, Any]] = {c: {} for c, _ in configs}
    rows: list[Row] = []
    try:
        for peer in ctx.peers():
            for cname, timeout in configs:
                masters[(peer, cname)] = L.start(peer, 4, timeout=timeout)
        for (peer, cname), m in list(masters.items()):
            try:
                L.wait_ready(m, 4, timeout=60)
            except BenchError as exc:
                _report_error(ctx, f"idle {peer} {cname}", exc)
                result[cname][peer] = _err(exc)
                L.stop(m)
                del masters[(peer, cname)]
        _settle(1.0)
        # (a) CPU time, before any strace (attaching and detaching wakes a master up)
        ctx.log(f"5 idle master: CPU time of {len(masters)} masters for {window:g} s")
        before = {key: cpu_seconds(m.pid) for key, m in masters.items()}
        time.sleep(window)
        for key, m in masters.items():
            used = cpu_seconds(m.pid) - before[key]
            peer, cname = key
            entry = result[cname].setdefault(peer, {})
            if isinstance(entry, dict):
                entry["cpu_s"] = used
        # (b) system calls, all idle masters at once, every thread of each master (no -f:
        # the workers are not traced).
        if strace:
            ctx.log(f"5 idle master: strace of {len(masters)} masters for {window:g} s")
            tracers = {}
            for key, m in masters.items():
                out = os.path.join(m.tmp, "strace.txt")
                cmd = [strace, "-qq", "-ttt", "-T", "-o", out]
                for tid in sorted(os.listdir(f"/proc/{m.pid}/task")):
                    cmd += ["-p", tid]
                tracers[key] = (
                    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    out,
                )
            time.sleep(window + 0.2)  # strace needs a moment to attach
            for proc, _out in tracers.values():
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGINT)
            for proc, _out in tracers.values():
                L.reaper.wait_reaped(proc.pid, 10)
            for (peer, cname), (_proc, out) in tracers.items():
                entry = result[cname].setdefault(peer, {})
                if isinstance(entry, dict):
                    entry["strace"] = parse_strace(out)
    finally:
        for m in masters.values():
            L.stop(m)

    ctx.raw["idle_master"] = {"window_s": window, **result}
    for cname, timeout in configs:
        per_s: dict[str, Value] = {}
        wakes: dict[str, Value] = {}
        cpu: dict[str, Value] = {}
        for peer in PEERS:
            entry = result[cname].get(peer)
            if entry is None:
                why = ctx.missing(peer) and "not installed"
                per_s[peer] = wakes[peer] = cpu[peer] = why or "error"
                continue
            if isinstance(entry, str):
                per_s[peer] = wakes[peer] = cpu[peer] = entry
                continue
            if "strace" in entry:
                per_s[peer] = entry["strace"]["total"] / window
                wakes[peer] = float(len(entry["strace"]["wakeups"]))
            else:
                per_s[peer] = wakes[peer] = "n/a: strace not installed"
            cpu[peer] = entry.get("cpu_s", float("nan")) * 1000.0
        interval = 30.0  # --poll default; with --timeout 30 the deadline is no sooner
        allowed = int(window // interval) + 1
        r1 = Row("5 idle master", f"{cname}: syscalls/s", "/s", per_s)
        r2 = Row("5 idle master", f"{cname}: wake-ups in {window:g} s", "", wakes)
        r2.target = f"<= {allowed} (poll {interval:g} s" + (")" if not timeout else ", deadline)")
        if _num(wakes.get("unicornish")):
            r2.met = wakes["unicornish"] <= allowed  # type: ignore[operator]
        r3 = Row("5 idle master", f"{cname}: CPU ms in {window:g} s", "ms", cpu)
        rows += [r1, r2, r3]
    return rows


# -- 6. worker loop ------------------------------------------------------------------------

_BARE = """
import sys, itertools
sys.path.insert(0, {apps!r})
import uni_loop
class W:
    alive = True
w = W()
f = uni_loop.worker_start
for _ in itertools.repeat(None):
    f(w)
"""


def _rates(ctx: Ctx, box: Any, windows: int, window: float) -> list[float]:
    got = ctx.launcher.ann.wait(
        box,
        lambda ms: (
            [x for x in ms if x.kind == "rate"][:windows]
            if sum(x.kind == "rate" for x in ms) >= windows
            else None
        ),
        windows * window + 30,
    )
    return [float(x.extra[0]) for x in got]  # type: ignore[attr-defined]


COUNTER_LABEL = "one app counter inc per task"
# With --control the metrics can be read, so workers also record each task's
# duration (unicornish_task_duration_seconds): what that costs an empty task.
DURATIONS_LABEL = "one app counter inc per task, --control (task durations recorded)"
LOOP_VARIANTS: tuple[tuple[str, int | None, dict[str, str], bool], ...] = (
    ("no --timeout", None, {}, False),
    ("--timeout 30", 30, {}, False),
    (COUNTER_LABEL, None, {"BENCH_LOOP_COUNTER": "1"}, False),
    (DURATIONS_LABEL, None, {"BENCH_LOOP_COUNTER": "1"}, True),
)


def s6_worker_loop(ctx: Ctx) -> list[Row]:
    """Empty tasks per second: the median of several 0.5 s windows (the machine may
    not be quiet; the median of short windows shrugs off a burst of other work)."""
    L = ctx.launcher
    window = 0.5
    windows = 4 if ctx.quick else 10
    env = {"BENCH_LOOP_WINDOW": str(window)}
    res: dict[str, Value] = {}
    raw: dict[str, Any] = {}
    for label, timeout, extra, control in LOOP_VARIANTS:
        if ctx.missing("unicornish"):
            res[label] = "not installed"
            continue
        ctx.log(f"6 worker loop unicornish {label}: {windows} x {window:g} s of empty tasks")
        m = L.start(
            "unicornish",
            1,
            app="loop",
            timeout=timeout,
            extra_env={**env, **extra},
            control=control,
        )
        try:
            rates = _rates(ctx, m.inbox, windows, window)
            res[label] = summary(rates)["p50"]
            raw[label] = {"windows": rates, **summary(rates)}
        except (BenchError, OSError, ValueError, IndexError) as exc:
            _report_error(ctx, f"worker loop {label}", exc)
            ctx.log(f"  master log tail:\n{m.log_tail()}")
            res[label] = raw[label] = _err(exc)
        finally:
            L.stop(m)
    ctx.log(f"6 worker loop: bare Python loop, {windows} x {window:g} s of the same call")
    box = L.ann.open(os.path.join(ctx.launcher.workdir, "bare.sock"))
    penv = base_env()
    penv.update(env, BENCH_READY_SOCK=box.path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE.format(apps=APPS)],
        env=penv,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    L.sessions.add(proc.pid)
    try:
        rates = _rates(ctx, box, windows, window)
        bare: Value = summary(rates)["p50"]
        raw["bare loop"] = {"windows": rates, **summary(rates)}
    except (BenchError, ValueError, IndexError) as exc:
        _report_error(ctx, "bare loop", exc)
        bare = raw["bare loop"] = _err(exc)
    finally:
        L.sessions.kill(proc.pid)
        L.ann.close(box)
    ctx.raw["worker_loop"] = {"window_s": window, "tasks_per_s": raw}
    rows = []
    na = "no task loop"
    for label, _timeout, _extra, _control in LOOP_VARIANTS:
        vals: dict[str, Value] = {"unicornish": res[label], "bare loop": bare}
        _fill_missing(ctx, vals, {"gunicorn": na, "unicorn": na})
        row = Row("6 worker loop", f"{label}: tasks/s", "/s", vals, better="higher")
        row.baseline = "bare loop"
        if label == COUNTER_LABEL:
            row.target = ">= 1000000"
            row.met = (res[label] >= 1_000_000) if _num(res[label]) else None  # type: ignore[operator]
        elif timeout_label(label):
            row.target = ">= 500000"
            row.met = (res[label] >= 500_000) if _num(res[label]) else None  # type: ignore[operator]
        else:
            row.note = (
                f"median of {windows} windows of {window:g} s; bare loop (same call): "
                f"{fmt_rate(bare)}/s; gunicorn and Unicorn workers only serve requests"
            )
        rows.append(row)
    return rows


def fmt_rate(v: Value) -> str:
    return f"{v:,.0f}" if _num(v) else str(v)


def timeout_label(label: str) -> bool:
    return "--timeout" in label and not label.startswith("no")


# -- 7. preload memory -----------------------------------------------------------------------


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    out["Uss"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def _memory_group(m: Master, workers: list[int]) -> dict[str, Any]:
    master = smaps_rollup(m.pid)
    ws = [smaps_rollup(p) for p in workers]
    return {
        "master": {"pss": master["Pss"], "uss": master["Uss"], "rss": master["Rss"]},
        "workers": [{"pss": w["Pss"], "uss": w["Uss"], "rss": w["Rss"]} for w in ws],
        "total_pss": master["Pss"] + sum(w["Pss"] for w in ws),
    }


def preload_memory_once(ctx: Ctx, peer: str, freeze: bool, mb: float) -> dict[str, Any]:
    L = ctx.launcher
    env = {"BENCH_HEAP_MB": str(mb)}
    if peer == "gunicorn" and freeze:
        env["BENCH_GC_FREEZE"] = "1"  # the app calls gc.freeze() at the end of its import
    if peer == "unicornish" and not freeze:
        env["BENCH_GC_UNFREEZE"] = "1"  # unicornish freezes by itself; the worker undoes it
    m = L.start(peer, 1, app="heap", preload=True, extra_env=env)
    try:
        got = L.wait_ready(m, 1, timeout=120)
        first = list(got)
        heap_msg = [x for x in m.msgs() if x.kind == "ready"][0]
        heap_bytes = int(heap_msg.extra[1])
        _settle(0.5)
        one = _memory_group(m, first)
        idx = len(m.msgs())
        for k in range(1, 8):
            m.signal(signal.SIGTTIN)
            L.wait_ready(m, k, since=idx, timeout=60)
        allw = first + list(ready_pids(m.msgs(), idx))
        _settle(1.0)
        eight = _memory_group(m, allw)
        extra = (eight["total_pss"] - one["total_pss"]) / 7
        return {
            "heap_bytes": heap_bytes,
            "one_worker": one,
            "eight_workers": eight,
            "extra_worker_pss": extra,
            "worker_pss_mean": sum(w["pss"] for w in eight["workers"]) / 8,
            "worker_uss_mean": sum(w["uss"] for w in eight["workers"]) / 8,
        }
    finally:
        L.stop(m)


def s7_preload_memory(ctx: Ctx) -> list[Row]:
    mb = 100.0
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    for freeze in (True, False):
        label = "gc.freeze()" if freeze else "no freeze"
        res: dict[str, Any] = {}
        for peer in PEERS:
            if ctx.missing(peer):
                res[peer] = "not installed"
                continue
            if peer == "unicorn" and freeze:
                res[peer] = "n/a: no gc.freeze()"
                continue
            ctx.log(f"7 preload memory {peer} [{label}]: {mb:g} MB app, 1 then 8 workers")
            try:
                res[peer] = preload_memory_once(ctx, peer, freeze, mb)
            except (BenchError, OSError, ValueError, IndexError) as exc:
                _report_error(ctx, f"preload memory {peer}", exc)
                res[peer] = _err(exc)
        raw[label] = res

        def pick(key: str, scale: float, res: dict[str, Any] = res) -> dict[str, Value]:
            return {p: (v[key] * scale if isinstance(v, dict) else v) for p, v in res.items()}

        pct = {
            p: (100.0 * v["extra_worker_pss"] / v["heap_bytes"] if isinstance(v, dict) else v)
            for p, v in res.items()
        }
        mib = 1.0 / (1 << 20)
        note = (
            "gunicorn: the app calls gc.freeze() at the end of its import (in the master)"
            if freeze
            else "unicornish freezes by itself: its worker calls gc.unfreeze() first; "
            "Unicorn: Ruby's default (Ruby has no gc.freeze()), GC.start in each worker"
        )
        r_pct = Row("7 preload memory", f"{label}: extra worker PSS, % of heap", "%", pct)
        r_pct.note = note
        if freeze:
            r_pct.target = "<= 10%"
            v = pct.get("unicornish")
            r_pct.met = (v <= 10.0) if _num(v) else None  # type: ignore[operator]
        rows += [
            Row(
                "7 preload memory",
                f"{label}: heap of the app",
                "MiB",
                pick("heap_bytes", mib),
                compare=False,
            ),
            Row(
                "7 preload memory",
                f"{label}: PSS per worker (8)",
                "MiB",
                pick("worker_pss_mean", mib),
            ),
            Row(
                "7 preload memory",
                f"{label}: USS per worker (8)",
                "MiB",
                pick("worker_uss_mean", mib),
            ),
            Row(
                "7 preload memory",
                f"{label}: extra worker PSS",
                "MiB",
                pick("extra_worker_pss", mib),
            ),
            r_pct,
        ]
    ctx.raw["preload_memory"] = raw
    return rows


# -- 8. master death -------------------------------------------------------------------------


def _kill_masters_and_watch(
    ctx: Ctx, masters: list[tuple[str, Master]], cap: float
) -> Callable[[], dict[str, list[float]]]:
    """Wait for readiness, SIGKILL the masters, watch their workers' pidfds in a thread.

    Returns a function that joins the thread and gives peer -> seconds from
    the master's SIGKILL to the exit of its last worker (inf: past the cap).
    """
    L = ctx.launcher
    fds: dict[int, dict[int, int | None]] = {}
    for _peer, m in masters:
        got = L.wait_ready(m, 4, timeout=60)
        fds[m.pid] = {p: pidfd(p) for p in got}
    _settle(1.0)
    t0 = {}
    for _peer, m in masters:
        t0[m.pid] = time.monotonic()
        os.kill(m.pid, signal.SIGKILL)
    allfds = {p: fd for d in fds.values() for p, fd in d.items()}
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.update(exits=wait_exits(allfds, cap)), name="master-death", daemon=True
    )
    thread.start()

    def join() -> dict[str, list[float]]:
        thread.join(cap + 5)
        exits = box.get("exits", {})
        out: dict[str, list[float]] = {}
        for peer, m in masters:
            ts = [exits.get(p) for p in fds[m.pid]]
            if any(t is None for t in ts):
                out.setdefault(peer, []).append(float("inf"))
            else:
                out.setdefault(peer, []).append(max(ts) - t0[m.pid])  # type: ignore[type-var]
        return out

    return join


def s8_master_death(ctx: Ctx) -> list[Row]:
    """SIGKILL the master, time until its last idle worker has exited.

    unicornish runs first, alone, one run at a time. The peers' idle workers
    may only look at their parent when their select() times out (gunicorn:
    --timeout, 30 s), so all peer runs go at once, in parallel; with --quick
    they are left to finish in the background while scenarios 5, 6 and 9 run
    (their workers sit idle in select() meanwhile), and s8_collect() reads them.
    """
    L = ctx.launcher
    mine_reps = 3 if ctx.quick else 10
    peer_reps = 2 if ctx.quick else 3
    samples: dict[str, list[float] | str] = {}
    ctx.raw["_death_samples"] = samples
    for peer in PEERS:
        if ctx.missing(peer):
            samples[peer] = "not installed"
    if not ctx.missing("unicornish"):
        samples["unicornish"] = []
        for rep in range(mine_reps):
            ctx.log(f"8 master death unicornish (run {rep + 1}/{mine_reps})")
            m = L.start("unicornish", 4)
            try:
                got = _kill_masters_and_watch(ctx, [("unicornish", m)], DEATH_CAP_MINE)()
                samples["unicornish"] += got["unicornish"]  # type: ignore[operator]
            except (BenchError, OSError) as exc:
                _report_error(ctx, "master death unicornish", exc)
                samples["unicornish"] = _err(exc)
                break
            finally:
                L.stop(m)
    others = ctx.peers("gunicorn", "unicorn")
    if others:
        ctx.log(
            f"8 master death {'+'.join(others)}: {peer_reps} runs each, all at once "
            f"(up to {DEATH_CAP_PEERS:g} s{', in the background' if ctx.quick else ''})"
        )
        ms = [(p, L.start(p, 4)) for p in others for _ in range(peer_reps)]
        try:
            join = _kill_masters_and_watch(ctx, ms, DEATH_CAP_PEERS)
        except (BenchError, OSError) as exc:
            _report_error(ctx, "master death peers", exc)
            for p in others:
                samples[p] = _err(exc)
            for _p, m in ms:
                L.stop(m)
            return s8_collect(ctx)
        ctx.raw["_death_pending"] = (join, ms)
    return [] if ctx.quick else s8_collect(ctx)


DEATH_CAP_MINE = 10.0
DEATH_CAP_PEERS = 75.0


def s8_collect(ctx: Ctx) -> list[Row]:
    samples = ctx.raw.pop("_death_samples", None)
    if samples is None:
        return []
    pending = ctx.raw.pop("_death_pending", None)
    if pending is not None:
        join, ms = pending
        ctx.log("8 master death: waiting for the peers' workers")
        for peer, xs in join().items():
            samples[peer] = xs
        for _p, m in ms:
            ctx.launcher.stop(m)
    ctx.raw["master_death"] = {
        p: ({"samples_s": v, **summary(v)} if isinstance(v, list) else v)
        for p, v in samples.items()
    }
    rows = _stat_rows("8 master death", "last worker gone", "ms", samples, 1000.0)
    _target_max(rows, "<= 1000 ms", 1000)
    rows[0].note = f"peers capped at {DEATH_CAP_PEERS:g} s; 'never' = still running then"
    return rows


# -- 9. graceful stop -------------------------------------------------------------------------


def s9_graceful_stop(ctx: Ctx) -> list[Row]:
    L = ctx.launcher
    reps = 2 if ctx.quick else 10
    samples: dict[str, list[float] | str] = {}
    for peer in PEERS:
        if ctx.missing(peer):
            samples[peer] = "not installed"
            continue
        samples[peer] = []
        sig = GRACEFUL[peer]
        for rep in range(reps):
            ctx.log(
                f"9 graceful stop {peer}: {sig.name} with 4 idle workers (run {rep + 1}/{reps})"
            )
            m = L.start(peer, 4)
            try:
                L.wait_ready(m, 4, timeout=60)
                _settle(0.5)
                fd = {m.pid: pidfd(m.pid)}
                t0 = time.monotonic()
                m.signal(sig)
                t = wait_exits(fd, 60)[m.pid]
                if t is None:
                    raise BenchError(f"{peer}: master still running 60 s after {sig.name}")
                samples[peer].append(t - t0)  # type: ignore[union-attr]
            except (BenchError, OSError) as exc:
                _report_error(ctx, f"graceful stop {peer}", exc)
                if not samples[peer]:
                    samples[peer] = _err(exc)
                break
            finally:
                L.stop(m)
    ctx.raw["graceful_stop"] = {
        p: ({"samples_s": v, **summary(v)} if isinstance(v, list) else v)
        for p, v in samples.items()
    }
    rows = _stat_rows("9 graceful stop", "master exited", "ms", samples, 1000.0)
    rows[0].note = "signal: unicornish QUIT, gunicorn TERM, Unicorn QUIT"
    return rows


# -- 10. adaptive worker count --------------------------------------------------------------

BURST_MIN, BURST_MAX = 2, 8
BURST_HOLD_MS = 100  # each job holds its worker this long
BURST_RATE = 50.0  # jobs/s during a burst: ~5 busy workers wanted, 2.5x what MIN can do
QUIET_RATE = 3.0  # jobs/s between bursts
BURST_SCALE_DOWN = 1.0  # --scale-down-after of the adaptive master: idle workers go within the gaps


def burst_schedule(cycles: int, burst_s: float, quiet_s: float, seed: int = 10) -> list[float]:
    """Send times (seconds from the start): Poisson arrivals, bursts then quiet gaps.
    The same seed for every configuration, so all see the same load."""
    rng = random.Random(seed)
    times: list[float] = []
    t0 = 0.0
    for _ in range(cycles):
        for length, rate in ((burst_s, BURST_RATE), (quiet_s, QUIET_RATE)):
            t = t0 + rng.expovariate(rate)
            while t < t0 + length:
                times.append(t)
                t += rng.expovariate(rate)
            t0 += length
    return times


def drive_bursts(path: str, master_pid: int, schedule: list[float], cap: float) -> dict[str, Any]:
    """Open loop: each job is sent at its time whatever came before (a late one is
    late from its scheduled time); one thread, non-blocking sockets. Meanwhile
    the master's children are counted every 0.1 s for the worker-seconds."""
    sel = selectors.DefaultSelector()
    start = time.monotonic() + 0.2
    due = [start + t for t in schedule]
    latencies: list[float] = []
    failed = 0
    i = 0
    worker_seconds = 0.0
    counts: list[int] = []
    last_count_at = start
    count = len(children_of(master_pid))
    end_by = due[-1] + cap if due else start
    while (i < len(due) or sel.get_map()) and time.monotonic() < end_by:
        now = time.monotonic()
        while i < len(due) and due[i] <= now:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)  # queued at once: the backlog is 1024
                sock.sendall(f"{BURST_HOLD_MS}\n".encode())
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, due[i])
            except OSError:
                sock.close()
                failed += 1
            i += 1
        if now - last_count_at >= 0.1:
            worker_seconds += count * (now - last_count_at)
            last_count_at = now
            count = len(children_of(master_pid))
            counts.append(count)
        wait = 0.1 if i >= len(due) else min(0.1, max(0.0, due[i] - now))
        for key, _events in sel.select(wait):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"ok"):
                latencies.append(time.monotonic() - key.data)
            else:
                failed += 1
            sel.unregister(sock)
            sock.close()
    for key in list(sel.get_map().values()):
        failed += 1
        key.fileobj.close()  # type: ignore[union-attr]
    now = time.monotonic()
    worker_seconds += count * (now - last_count_at)
    return {
        "latencies_s": latencies,
        "failed": failed,
        "worker_seconds": worker_seconds,
        "seconds": now - start,
        "mean_workers": worker_seconds / max(1e-9, now - start),
        "max_workers": max(counts, default=count),
    }


def _voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def s10_adaptive(ctx: Ctx) -> list[Row]:
    """Bursts of jobs against fixed MAX, fixed MIN and adaptive MIN:MAX: tail latency
    of the jobs, and the worker-seconds each spends; then an idle adaptive master."""
    L = ctx.launcher
    if ctx.missing("unicornish"):
        return []
    cycles, burst_s, quiet_s = (2, 2.5, 4.5) if ctx.quick else (5, 3.0, 7.0)
    schedule = burst_schedule(cycles, burst_s, quiet_s)
    adaptive = f"adaptive {BURST_MIN}:{BURST_MAX}"
    configs: list[tuple[str, str, list[str]]] = [
        (f"fixed {BURST_MAX} (MAX)", str(BURST_MAX), []),
        (f"fixed {BURST_MIN} (MIN)", str(BURST_MIN), []),
        (adaptive, f"{BURST_MIN}:{BURST_MAX}", ["--scale-down-after", f"{BURST_SCALE_DOWN:g}"]),
    ]
    results: dict[str, dict[str, Any] | str] = {}
    for label, workers, extra in configs:
        ctx.log(
            f"10 adaptive {label}: {len(schedule)} jobs of {BURST_HOLD_MS} ms, {cycles} bursts"
            f" of {burst_s:g} s at {BURST_RATE:g}/s, gaps of {quiet_s:g} s at {QUIET_RATE:g}/s"
        )
        first = int(workers.split(":")[0]) if ":" in workers else int(workers)
        m = L.start("unicornish", workers, app="burst", extra_args=extra)
        try:
            L.wait_ready(m, max(1, first), timeout=60)
            _settle(0.5)
            got = drive_bursts(m.listen, m.pid, schedule, cap=30.0)
            with open(m.log, errors="replace") as f:
                log = f.read()
            got["scale_ups"] = log.count("] scale up: ")
            got["scale_downs"] = log.count("] scale down: ")
            results[label] = got
        except (BenchError, OSError, ValueError) as exc:
            _report_error(ctx, f"adaptive {label}", exc)
            results[label] = _err(exc)
        finally:
            L.stop(m)
    # The idle master: an adaptive one looks at its workers once a second, a fixed one never.
    window = 4.0 if ctx.quick else 20.0
    idle: dict[str, dict[str, float] | str] = {}
    ctx.log(f"10 adaptive: idle masters, {window:g} s")
    masters = {
        adaptive: L.start("unicornish", f"{BURST_MIN}:{BURST_MAX}", app="burst"),
        f"fixed {BURST_MAX}": L.start("unicornish", str(BURST_MAX), app="burst"),
    }
    try:
        for label, m in masters.items():
            L.wait_ready(m, BURST_MIN if label == adaptive else BURST_MAX, timeout=60)
        _settle(1.0)
        before = {k: (_voluntary_switches(m.pid), cpu_seconds(m.pid)) for k, m in masters.items()}
        time.sleep(window)
        for k, m in masters.items():
            idle[k] = {
                "wakeups": float(_voluntary_switches(m.pid) - before[k][0]),
                "cpu_ms": (cpu_seconds(m.pid) - before[k][1]) * 1000.0,
            }
    except (BenchError, OSError) as exc:
        _report_error(ctx, "adaptive idle", exc)
        idle = {k: _err(exc) for k in masters}
    finally:
        for m in masters.values():
            L.stop(m)
    ctx.raw["adaptive"] = {
        "schedule": {
            "jobs": len(schedule),
            "cycles": cycles,
            "burst_s": burst_s,
            "quiet_s": quiet_s,
            "burst_rate": BURST_RATE,
            "quiet_rate": QUIET_RATE,
            "hold_ms": BURST_HOLD_MS,
            "scale_down_after_s": BURST_SCALE_DOWN,
        },
        "runs": {
            k: (
                {**{x: y for x, y in v.items() if x != "latencies_s"}, **summary(v["latencies_s"])}
                if isinstance(v, dict) and v["latencies_s"]
                else v
            )
            for k, v in results.items()
        },
        "idle": idle,
    }
    na = {"gunicorn": "no adaptive count", "unicorn": "no adaptive count"}
    fixed_max = configs[0][0]
    rows: list[Row] = []

    def figure(label: str, what: str) -> Value:
        got = results.get(label)
        if not isinstance(got, dict):
            return got or "error"
        xs = got["latencies_s"]
        if what in ("p50", "p99"):
            return (percentile(xs, 0.5 if what == "p50" else 0.99) * 1000.0) if xs else "error"
        return float(got[what])

    for what, metric, unit in (
        ("p50", "latency p50", "ms"),
        ("p99", "latency p99", "ms"),
        ("worker_seconds", "worker-seconds", "s"),
    ):
        for label, _w, _e in configs:
            vals: dict[str, Value] = {"unicornish": figure(label, what)}
            if label != fixed_max:
                vals[fixed_max] = figure(fixed_max, what)
            _fill_missing(ctx, vals, na)
            row = Row("10 adaptive", f"{label}: {metric}", unit, vals)
            if label != fixed_max:
                row.baseline = fixed_max
            rows.append(row)
    got = results.get(adaptive)
    if isinstance(got, dict):
        vals = {"unicornish": float(got["scale_ups"] + got["scale_downs"])}
        _fill_missing(ctx, vals, na)
        rows.append(Row("10 adaptive", f"{adaptive}: count changes", "", vals, compare=False))
    for label, entry in idle.items():
        for key, metric, unit in (("wakeups", "wake-ups", ""), ("cpu_ms", "CPU ms", "ms")):
            value: Value = entry[key] if isinstance(entry, dict) else entry
            vals = {"unicornish": value}
            _fill_missing(ctx, vals, na)
            name = f"idle {label}: {metric} in {window:g} s"
            rows.append(Row("10 adaptive", name, unit, vals, compare=False))
    rows[0].note = (
        f"{len(schedule)} jobs of {BURST_HOLD_MS} ms; {cycles} bursts of {burst_s:g} s at"
        f" {BURST_RATE:g}/s, gaps of {quiet_s:g} s at {QUIET_RATE:g}/s; latency from each job's"
        f" scheduled send to its answer; adaptive: --idle-workers 1 --scale-down-after"
        f" {BURST_SCALE_DOWN:g}; ratio vs {fixed_max}"
    )
    return rows


ALL: list[tuple[str, Callable[[Ctx], list[Row]]]] = [
    ("respawn", s1_respawn),
    ("cold", s2_s3_cold_start_and_storm),
    ("scale", s4_scale_up),
    # With --quick, scenario 8 leaves its peers' runs going while 5, 6, 9 and 7 run.
    ("death", s8_master_death),
    ("idle", s5_idle_master),
    ("loop", s6_worker_loop),
    ("stop", s9_graceful_stop),
    ("memory", s7_preload_memory),
    ("death", s8_collect),
    ("adaptive", s10_adaptive),
]


# -- 12. metrics endpoint ---------------------------------------------------------------------


def s12_metrics(ctx: Ctx) -> list[Row]:
    """GET /metrics with 256 workers (text and OpenMetrics), and the idle master's
    syscalls between scrapes: bench/metrics_latency.py, run here and parsed."""
    if ctx.missing("unicornish"):
        return []
    requests, idle = (50, 4.0) if ctx.quick else (200, 10.0)
    ctx.log(f"12 metrics: 256 workers, {requests} scrapes per format, {idle:g} s idle")
    script = os.path.join(os.path.dirname(__file__), "metrics_latency.py")
    cmd = [sys.executable, script, "--workers", "256", "--requests", str(requests)]
    cmd += ["--idle", f"{idle:g}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    except subprocess.TimeoutExpired as exc:
        _report_error(ctx, "metrics", exc)
        return []
    na = {"gunicorn": "no metrics endpoint", "unicorn": "no metrics endpoint"}
    rows = []
    for name in ("text 0.0.4", "OpenMetrics"):
        found = re.search(
            rf"/metrics \({re.escape(name)}\).*?p50 ([\d.]+) ms.*?master CPU ([\d.]+) ms", out
        )
        vals: dict[str, Value] = {"unicornish": float(found.group(1)) if found else "failed"}
        vals.update(na)
        row = Row("12 metrics", f"/metrics {name}, 256 workers p50", "ms", vals, compare=False)
        row.target = "< 20 ms"
        row.met = (vals["unicornish"] < 20) if found else None  # type: ignore[operator]
        if found:
            row.note = f"master CPU {found.group(2)} ms per scrape ({name})"
        rows.append(row)
    calls = re.search(r"master syscalls in ([\d.]+) s idle.*?: (\d+)", out)
    vals = {"unicornish": int(calls.group(2)) if calls else "failed", **na}
    row = Row("12 metrics", "idle master syscalls between scrapes", "", vals, compare=False)
    row.target = "0"
    row.met = (vals["unicornish"] == 0) if calls else None
    rows.append(row)
    ctx.raw["metrics"] = {"output": out}
    return rows
