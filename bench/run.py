#!/usr/bin/env python3
"""unicornish against gunicorn and Ruby's Unicorn, side by side, in one run.

    bench/.venv/bin/python bench/run.py [--quick] [--only respawn,idle,...] [--out DIR]

`make bench` (and `make bench QUICK=1`) run this after bench/setup.sh. It
prints a table, writes bench/results/latest.json, latest.md and respawn.png.
A peer that is not installed gets "not installed" in its column; nothing
else changes. Every process started here is killed when it ends, also on
Ctrl-C. See bench/README.md for what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import become_subreaper  # noqa: E402
from http_asgi import s14_asgi  # noqa: E402
from refork import s13_refork  # noqa: E402
from report import markdown_table, plot_respawn, plot_scale, text_table, write_json  # noqa: E402
from scale import s10_scale  # noqa: E402
from scenarios import ALL as BASE  # noqa: E402
from scenarios import Ctx, Row, s12_metrics  # noqa: E402
from servers import BENCH, ROOT, Launcher, availability, versions  # noqa: E402

# scale.py builds on scenarios.py, so the list of every scenario is made here.
ALL = [
    *BASE,
    ("scale-n", s10_scale),
    ("metrics", s12_metrics),
    ("refork", s13_refork),
    ("asgi", s14_asgi),
]


def _git_rev() -> str:
    try:
        r = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat), before the bench starts."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals) - idle, sum(vals)

    b0, t0 = snap()
    time.sleep(seconds)
    b1, t1 = snap()
    return (b1 - b0) / max(1, t1 - t0)


def _cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds used by everything on the machine, by this bench and all it reaped)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def _loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter windows (< 2 min)")
    names = [n for n, _ in ALL]
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(names))
    ap.add_argument("--out", default=os.path.join(BENCH, "results"), help="results directory")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to SECONDS (default 60; --quick: 0) for 3 seconds in a row"
        " with < 10%% of the CPUs busy",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="show each master's command")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    for s in only:
        if s not in names:
            ap.error(f"unknown scenario {s!r}; choose from {','.join(names)}")

    # Ctrl-C and TERM both end up in the finally below, which kills everything we started.
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    if not become_subreaper():
        print("bench: warning: could not become a child subreaper", file=sys.stderr)

    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 60.0
    if args.wait_quiet > 0:
        end = time.monotonic() + args.wait_quiet
        quiet = 0
        while quiet < 3 and time.monotonic() < end:
            quiet = quiet + 1 if _busy() < 0.1 else 0
    busy = _busy()
    load_start = _loadavg()
    if busy > 0.1:
        print(
            f"bench: warning: the machine is not quiet ({busy:.0%} of the CPUs busy before"
            " the start); timings will be noisy",
            file=sys.stderr,
        )
    cpu0 = _cpu_snapshot()
    avail = availability()
    vers = versions()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="unicornish-bench-")
    launcher = Launcher(workdir, verbose=args.verbose)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    for peer, why in avail.items():
        log(f"{peer}: {why or vers.get(peer, '')}")
    ctx = Ctx(launcher, avail, args.quick, log)
    rows: list[Row] = []
    failures: list[str] = []
    interrupted = False
    try:
        done = set()
        for name, fn in ALL:
            if only and name not in only:
                continue
            if fn in done:
                continue
            done.add(fn)
            try:
                rows += fn(ctx)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not stop the rest
                failures.append(f"{name}: {exc}")
                log(f"!! scenario {name} failed: {exc}\n{traceback.format_exc()}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything the bench started")
    finally:
        launcher.close()
        shutil.rmtree(workdir, ignore_errors=True)

    cpu1 = _cpu_snapshot()
    # Everything the bench started is reaped by it (it is their subreaper), so what the
    # machine used beyond our own and our children's CPU time was someone else's work.
    others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]))
    others_share = others / max(1e-9, (time.monotonic() - started) * (os.cpu_count() or 1))
    rows.sort(key=lambda r: int(r.scenario.split()[0]))  # stable: keeps each scenario's order
    elapsed = time.monotonic() - started
    cmd = "make bench" + (" QUICK=1" if args.quick else "")
    if only:
        quick = "--quick " if args.quick else ""
        cmd = f"bench/.venv/bin/python bench/run.py {quick}--only {args.only}"
    meta = {
        "command": cmd,
        "quick": args.quick,
        "only": only or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "host": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "kernel": platform.release(),
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
        },
        "versions": vers,
        "unicornish_rev": _git_rev(),
        "availability": {k: (v or "installed") for k, v in avail.items()},
        "cpu_busy_before_start": round(busy, 3),
        "cpu_share_used_by_other_processes": round(others_share, 3),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "failures": failures,
        "interrupted": interrupted,
    }
    print()
    print(
        f"unicornish bench ({cmd}; {os.cpu_count()} CPUs, {meta['host']['cpu']}; {elapsed:.0f} s)"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(
        f"machine: {busy:.0%} of the CPUs busy before the start; other processes used"
        f" {others_share:.0%} of the CPUs during the run"
        + (" - NOT QUIET, figures are noisy" if others_share > 0.05 else "")
    )
    print("ratio = unicornish / the better peer (lower is better for times, syscalls, memory;")
    print("        higher for tasks/s, where the ratio is against a bare Python loop)")
    print()
    print(text_table(rows))
    if interrupted:
        print("\n(interrupted: results are partial and were not written)")
        return 130
    if only and args.out == os.path.join(BENCH, "results"):
        args.out = os.path.join(BENCH, "results", "partial")  # a subset never replaces latest
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "latest.json"), meta, rows, ctx.raw)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(
            f"`{cmd}` on {meta['date']}, {os.cpu_count()} CPUs ({meta['host']['cpu']}), "
            f"unicornish {meta['unicornish_rev']}, "
            + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "unicornish")
            + "\n\n"
        )
        f.write(markdown_table(rows) + "\n")
    why = "scenario 1 not run"  # no respawn data: say so instead of naming an old plot
    if "respawn" in ctx.raw:
        why = plot_respawn(
            os.path.join(args.out, "respawn.png"),
            ctx.raw,
            f"{cmd} - {meta['date']} - {os.cpu_count()} CPUs",
        )
    if "scale_figures" in ctx.raw:
        scale_why = plot_scale(
            os.path.join(args.out, "scale.png"),
            ctx.raw,
            f"{cmd} - {meta['date']} - {os.cpu_count()} CPUs - cost against N (log-log)",
        )
        print("scale plot: " + (scale_why or os.path.relpath(os.path.join(args.out, "scale.png"))))
    print()
    print(
        f"wrote {os.path.relpath(os.path.join(args.out, 'latest.json'))}, "
        f"{os.path.relpath(os.path.join(args.out, 'latest.md'))}"
        + (
            f"; no plot: {why}"
            if why
            else ", " + os.path.relpath(os.path.join(args.out, "respawn.png"))
        )
    )
    if failures:
        print("scenarios that failed: " + "; ".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
