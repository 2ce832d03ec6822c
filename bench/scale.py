"""Scenario 11: the master's cost against the number of workers, N = 16 .. 4096.

For each peer and N, one master with a tiny idle app (unicornish: also a
second one with --timeout 30), and on it:

- cold start: launch until the last of N workers is ready (also per worker);
- idle CPU: the master's CPU time (every thread's schedstat, i.e. utime +
  stime at ns resolution) over a window with all workers idle, per second;
- CPU per respawn: one worker SIGKILLed a second, K times; the master's CPU
  over those seconds, less its idle rate, divided by K; and the respawn's
  latency at that N;
- status latency (unicornish, needs --control): one `{"command": "status"}`
  request on the control socket until its reply, measured here (not the CLI,
  whose interpreter start-up would hide it); also per worker listed, since
  the reply holds one entry per worker;
- master RSS (VmRSS) with all workers up.

Goal: a cost per event that does not grow with N (the 4096 figure within 4x
of the 256 one). Memory is checked before each size: a size whose workers
would need (the per-worker PSS seen at the previous size, plus 20%) more
than MemAvailable less 3 GiB is skipped, and a start is stopped when
MemAvailable falls under 2 GiB: the machine may be shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import socket
import time
from typing import Any

from harness import BenchError, cpu_seconds, ready_pids, summary
from scenarios import Ctx, Row, Value, _err, _fill_missing, _num, _report_error
from servers import PEERS, Master

SIZES = (16, 256, 1024, 4096)
# --quick keeps to two sizes: the whole curve (and the 4096/256 ratios) needs minutes
# and tens of GiB of peers' workers, which a 2-minute run cannot spend.
QUICK_SIZES = (16, 256)
# The figures and their rows: key, label, unit.
FIGURES = [
    ("cold_ms", "cold start", "ms"),
    ("cold_per_worker_ms", "cold start per worker", "ms"),
    ("respawn_cpu_ms", "master CPU per respawn", "ms"),
    ("respawn_p50_ms", "respawn latency p50", "ms"),
    ("idle_cpu_ms_s", "idle master CPU", "ms/s"),
    ("timeout_idle_cpu_ms_s", "idle master CPU, --timeout 30", "ms/s"),
    ("timeout_respawn_cpu_ms", "master CPU per respawn, --timeout 30", "ms"),
    ("status_ms", "status latency", "ms"),
    ("status_per_worker_us", "status latency per worker", "us"),
    ("rss_mib", "master RSS", "MiB"),
]
# Inherently one unit of work per worker (N forks, N entries in the reply): the
# per-worker figure is the one that must not grow; the total is shown for scale.
PER_WORKER_ONLY = {"cold_ms", "status_ms"}
MIN_AVAILABLE = 2 << 30
# Left to the machine's other users when a size is planned.
RESERVE = 3 << 30


def raise_limits(n: int) -> str:
    """Enough fds and processes for n workers (the bench and every master inherit them)."""
    notes = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 4 * n + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        notes.append(f"nofile {soft}->{want}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and soft < 2 * n + 4096:
        new = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, 2 * n + 4096))
        resource.setrlimit(resource.RLIMIT_NPROC, (new, hard))
        notes.append(f"nproc {soft}->{new}")
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    if pid_max < 4 * n:
        notes.append(f"pid_max {pid_max} is low for {n} workers (not changed: shared machine)")
    return ", ".join(notes)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def status_request(path: str, timeout: float = 60.0) -> tuple[float, int]:
    """Seconds from sending a status request to its whole reply; workers listed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        buf = bytearray()
        t0 = time.monotonic()
        s.sendall(b'{"command": "status"}\n')
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise BenchError("control socket closed before the reply")
            buf += chunk
        elapsed = time.monotonic() - t0
    reply = json.loads(buf)
    return elapsed, len(reply.get("workers", []))


def _start_all_ready(ctx: Ctx, peer: str, n: int, **kw: Any) -> tuple[Master, dict[int, float]]:
    """A master with n ready workers (its cold start is max(ready) - launch)."""
    L = ctx.launcher
    m = L.start(peer, n, **kw)
    timeout = 60 + n * (0.02 if ctx.quick else 0.06)
    end = time.monotonic() + timeout
    try:
        while True:
            got = ready_pids(m.msgs())
            if len(got) >= n:
                return m, got
            if m.pid in L.reaper.statuses:
                raise BenchError(f"master exited with {len(got)} of {n} ready")
            if mem_available() < MIN_AVAILABLE:
                raise BenchError(f"stopped: under 2 GiB free with {len(got)} of {n} ready")
            if time.monotonic() > end:
                raise BenchError(f"{len(got)} of {n} ready after {timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:
        L.stop(m)
        raise


def _idle_cpu(m: Master, window: float) -> float:
    c0 = cpu_seconds(m.pid)
    time.sleep(window)
    return (cpu_seconds(m.pid) - c0) / window


def _respawns(
    ctx: Ctx, m: Master, live: set[int], kills: int, idle_rate: float
) -> tuple[float, list[float]]:
    """One SIGKILL a second: (master CPU per respawn beyond its idle rate, latencies)."""
    L = ctx.launcher
    seen = set(live)
    lat = []
    c0, t0 = cpu_seconds(m.pid), time.monotonic()
    rng = random.Random(len(live))  # the same victims, run after run
    for i in range(kills):
        tick = t0 + i
        with contextlib.suppress(ValueError):
            time.sleep(max(0.0, tick - time.monotonic()))
        victim = rng.choice(sorted(live))
        idx = len(m.msgs())
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        got = L.wait_ready(m, 1, since=idx, timeout=30)
        new = [(t, p) for p, t in got.items() if p not in seen]
        if not new:
            raise BenchError("a known pid announced again")
        t, pid = min(new)
        lat.append(t - t_kill)
        live.discard(victim)
        live.add(pid)
        seen.add(pid)
    # The window ends one second after the last kill, like every other one.
    time.sleep(max(0.0, t0 + kills - time.monotonic()))
    cpu, elapsed = cpu_seconds(m.pid) - c0, time.monotonic() - t0
    return max(0.0, cpu - idle_rate * elapsed) / kills, lat


def scale_once(ctx: Ctx, peer: str, n: int, timeout: int | None = None) -> dict[str, Any]:
    window = 3.0 if ctx.quick else 10.0
    kills = 4 if ctx.quick else 10
    control = peer == "unicornish"
    m, got = _start_all_ready(ctx, peer, n, timeout=timeout, control=control)
    try:
        out: dict[str, Any] = {"cold_s": max(got.values()) - m.t_launch}
        time.sleep(1.0)  # the last ready reports and log lines
        out["rss"] = rss_bytes(m.pid)
        sample = sorted(got)[:: max(1, n // 32)]
        out["worker_pss"] = sum(pss_bytes(p) for p in sample) / len(sample)
        out["idle_cpu_s_per_s"] = _idle_cpu(m, window)
        if control:
            lats = []
            for _ in range(3 if ctx.quick else 5):
                t, listed = status_request(m.env["BENCH_CTL"])
                if listed != n:
                    raise BenchError(f"status listed {listed} workers, not {n}")
                lats.append(t)
            out["status_s"] = lats
        per, lat = _respawns(ctx, m, set(got), kills, out["idle_cpu_s_per_s"])
        out["respawn_cpu_s"] = per
        out["respawn_s"] = lat
        return out
    finally:
        ctx.launcher.stop(m)


def _figures(r: dict[str, Any], n: int, timed: dict[str, Any] | None) -> dict[str, float]:
    f = {
        "cold_ms": r["cold_s"] * 1000,
        "cold_per_worker_ms": r["cold_s"] * 1000 / n,
        "respawn_cpu_ms": r["respawn_cpu_s"] * 1000,
        "respawn_p50_ms": summary(r["respawn_s"])["p50"] * 1000,
        "idle_cpu_ms_s": r["idle_cpu_s_per_s"] * 1000,
        "rss_mib": r["rss"] / 2**20,
    }
    if "status_s" in r:
        p50 = summary(r["status_s"])["p50"]
        f["status_ms"] = p50 * 1000
        f["status_per_worker_us"] = p50 * 1e6 / n
    if timed is not None:
        f["timeout_idle_cpu_ms_s"] = timed["idle_cpu_s_per_s"] * 1000
        f["timeout_respawn_cpu_ms"] = timed["respawn_cpu_s"] * 1000
    return f


def s10_scale(ctx: Ctx) -> list[Row]:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    raw: dict[str, Any] = {"sizes": list(sizes), "limits": raise_limits(max(sizes))}
    figs: dict[str, dict[int, dict[str, float] | str]] = {}
    for peer in PEERS:
        figs[peer] = {}
        if ctx.missing(peer):
            for n in sizes:
                figs[peer][n] = "not installed"
            continue
        per_worker_pss = 0.0
        failed: str | None = None
        for n in sizes:
            if failed:
                figs[peer][n] = failed
                continue
            need = per_worker_pss * n * 1.2
            if need > mem_available() - RESERVE:
                figs[peer][n] = f"n/a: needs ~{need / 2**30:.0f} GiB"
                ctx.log(f"11 scale {peer} N={n}: skipped, would need ~{need / 2**30:.1f} GiB")
                failed = figs[peer][n]  # type: ignore[assignment]
                continue
            ctx.log(f"11 scale {peer}: N={n}")
            try:
                r = scale_once(ctx, peer, n)
                timed = None
                if peer == "unicornish":
                    ctx.log(f"11 scale {peer}: N={n}, --timeout 30")
                    timed = scale_once(ctx, peer, n, timeout=30)
                raw.setdefault(peer, {})[str(n)] = {"default": r, "timeout 30": timed}
                figs[peer][n] = _figures(r, n, timed)
                per_worker_pss = max(per_worker_pss, r["worker_pss"])
            except (BenchError, OSError, ValueError) as exc:
                _report_error(ctx, f"scale {peer} N={n}", exc)
                figs[peer][n] = _err(exc)
                raw.setdefault(peer, {})[str(n)] = _err(exc)
                failed = f"n/a: failed at N={n}"
    ctx.raw["scale"] = raw
    ctx.raw["scale_figures"] = {p: {str(n): v for n, v in d.items()} for p, d in figs.items()}
    rows: list[Row] = []
    for key, label, unit in FIGURES:
        for n in sizes:
            vals: dict[str, Value] = {}
            for peer in PEERS:
                f = figs[peer].get(n)
                if isinstance(f, str):
                    vals[peer] = f
                elif f is not None and key in f:
                    vals[peer] = f[key]
            na = {p: _na(key) for p in PEERS if p != "unicornish"}
            _fill_missing(ctx, vals, {p: v for p, v in na.items() if v})
            rows.append(Row("11 scale", f"{label}, N={n}", unit, vals))
        if key in PER_WORKER_ONLY:
            continue
        growth: dict[str, Value] = {}
        for peer in PEERS:
            a, b = figs[peer].get(256), figs[peer].get(4096)
            if isinstance(a, dict) and isinstance(b, dict) and key in a and key in b:
                growth[peer] = b[key] / a[key] if a[key] > 0 else (1.0 if b[key] == 0 else "inf")
            else:
                growth[peer] = "-"
        row = Row("11 scale", f"{label}: N=4096 / N=256", "x", growth, compare=False)
        row.target = "<= 4x"
        g = growth.get("unicornish")
        # An idle CPU of (nearly) 0 at both sizes is flat, whatever the quotient says.
        flat = isinstance(figs["unicornish"].get(4096), dict) and (
            figs["unicornish"][4096].get(key, 1.0) < 0.05 and unit == "ms/s"  # type: ignore[union-attr]
        )
        row.met = True if flat else ((g <= 4.0) if _num(g) else None)  # type: ignore[operator]
        rows.append(row)
    rows[0].note = (
        "N workers of a tiny idle app; CPU = the master's schedstat (utime+stime, ns); "
        "per respawn = (CPU over K kills at 1/s - idle CPU) / K; status: one request on "
        "the control socket (unicornish only); 4096/256 targets: unicornish"
    )
    return rows


def _na(key: str) -> str | None:
    if key.startswith("status"):
        return "no status command"
    if key.startswith("timeout_"):
        return "default has a timeout"
    return None
