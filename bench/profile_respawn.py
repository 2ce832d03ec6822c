#!/usr/bin/env python3
"""Where does a respawn's time go? A kernel-tracepoint timeline, per peer.

    bench/.venv/bin/python bench/profile_respawn.py [--kills 20] [--peers unicornish,unicorn]

Needs root and `perf` (Debian: linux-perf) with tracefs mounted; it mounts
tracefs on /sys/kernel/tracing if it is missing. For each peer and preload
mode, it SIGKILLs one of 4 idle workers `--kills` times under `perf record`
(tracing the master and its workers only, CLOCK_MONOTONIC timestamps, the
same clock as the bench) and splits each respawn into:

    victim exit   SIGKILL until the dying worker is gone (its pidfd turns readable,
                  as SIGCHLD is sent): kernel teardown, as seen by the bench
    to wake       SIGKILL until the master's first system call (teardown, SIGCHLD,
                  scheduling, the signal handler)
    master        the master's own work from then until fork() has copied the process
    fork->child   until the new child first runs
    child         the child's own work until it announces readiness

A second pass also traces page faults (copy-on-write after fork is most of
a CPython child's start-up) and counts them, with the system calls, in the
master (wake to fork) and in the child (start to ready). Tracing adds
overhead, so absolute times here are a little above the bench's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BenchError, become_subreaper, pidfd, wait_exits  # noqa: E402
from servers import BENCH, PEERS, Launcher, availability  # noqa: E402

EVENTS = [
    "sched:sched_process_fork",
    "syscalls:sys_exit_clone",
    "syscalls:sys_enter_sendto",
    "raw_syscalls:sys_enter",
]
_EV = re.compile(r"^\s*\S.*?\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+([\w:]+):(.*)$")


def ensure_tracefs() -> str | None:
    if not shutil.which("perf"):
        return "perf not installed (apt-get install linux-perf)"
    if not os.path.isdir("/sys/kernel/tracing/events"):
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True
        )
    if not os.path.isdir("/sys/kernel/tracing/events/sched"):
        return "tracefs not available (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


def record(
    launcher: Launcher, peer: str, preload: bool, kills: int, faults: bool, out: str
) -> tuple[int, list[tuple[float, int, int, float]]]:
    """Run the respawns under perf; return (master pid, [(t0, victim gone, new pid, ready)])."""
    m = launcher.start(peer, 4, preload=preload)
    try:
        live = list(launcher.wait_ready(m, 4, timeout=60))
        time.sleep(0.5)
        cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-o", out]
        cmd += ["-p", ",".join(str(p) for p in [m.pid, *live])]
        for e in EVENTS + (["exceptions:page_fault_user"] if faults else []):
            cmd += ["-e", e]
        perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # perf needs a moment to attach
        runs = []
        seen = set(live)
        for i in range(kills):
            victim = live[i % len(live)]
            idx = len(m.msgs())
            fd = {victim: pidfd(victim)}
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            t_exit = wait_exits(fd, 10)[victim] or t0
            got = launcher.wait_ready(m, 1, since=idx, timeout=30)
            pid, t = min(((p, t) for p, t in got.items() if p not in seen), key=lambda x: x[1])
            seen.add(pid)
            live[live.index(victim)] = pid
            runs.append((t0, t_exit, pid, t))
            time.sleep(0.15)
        perf.send_signal(signal.SIGINT)
        launcher.reaper.wait_reaped(perf.pid, 30)
        return m.pid, runs
    finally:
        launcher.stop(m)


def parse(path: str) -> list[tuple[int, float, str, str]]:
    r = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,pid,tid,cpu,time,event,trace"],
        capture_output=True,
        text=True,
    )
    out = []
    for line in r.stdout.splitlines():
        mt = _EV.match(line)
        if mt:
            out.append((int(mt.group(2)), float(mt.group(3)), mt.group(4), mt.group(5)))
    return out


def phases(
    events: list[tuple[int, float, str, str]], master: int, runs: list
) -> list[dict[str, float]]:
    res = []
    for t0, t_exit, child, ready in runs:
        ev = [e for e in events if t0 <= e[1] <= ready + 0.0005]
        # The victim's own events vanish as it exits (perf detaches before SIGCHLD is
        # sent), so its exit is the moment the bench's pidfd turned readable.
        woke = next((e[1] for e in ev if e[0] == master), None)
        fork = next(
            (
                e[1]
                for e in ev
                if e[2] == "sched:sched_process_fork" and f"child_pid={child}" in e[3]
            ),
            None,
        )
        first = next((e[1] for e in ev if e[0] == child), None)
        if None in (woke, fork, first):
            continue
        assert woke is not None and fork is not None and first is not None
        sysc_m = sum(
            1
            for e in ev
            if e[0] == master and woke <= e[1] <= fork and e[2] == "raw_syscalls:sys_enter"
        )
        pf_m = sum(
            1
            for e in ev
            if e[0] == master and woke <= e[1] <= fork and e[2] == "exceptions:page_fault_user"
        )
        sysc_c = sum(1 for e in ev if e[0] == child and e[2] == "raw_syscalls:sys_enter")
        pf_c = sum(1 for e in ev if e[0] == child and e[2] == "exceptions:page_fault_user")
        res.append(
            {
                "total": ready - t0,
                "victim exit": t_exit - t0,
                "to wake": woke - t0,
                "master": fork - woke,
                "fork->child": first - fork,
                "child": ready - first,
                "master syscalls": sysc_m,
                "master faults": pf_m,
                "child syscalls": sysc_c,
                "child faults": pf_c,
            }
        )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "respawn-profile.txt"))
    args = ap.parse_args()
    why = ensure_tracefs()
    if why:
        print("profile_respawn: " + why, file=sys.stderr)
        return 1
    become_subreaper()
    avail = availability()
    work = tempfile.mkdtemp(prefix="unicornish-profile-")
    launcher = Launcher(work)
    lines = [
        f"respawn profile: {args.kills} x SIGKILL one of 4 idle workers, per peer and mode; "
        "means (ms; counts are per respawn); total = to wake + master + fork->child + child",
        "",
    ]
    cols = ["total", "victim exit", "to wake", "master", "fork->child", "child"]
    counts = ["master syscalls", "master faults", "child syscalls", "child faults"]
    header = f"{'peer':<11} {'mode':<10} " + " ".join(f"{c:>11}" for c in cols + counts)
    lines += [header, "-" * len(header)]
    try:
        for preload in (False, True):
            for peer in args.peers.split(","):
                if avail.get(peer):
                    lines.append(f"{peer:<11} {'':<10} {avail[peer]}")
                    continue
                mode = "preload" if preload else "no preload"
                print(f"profiling {peer} [{mode}]", file=sys.stderr, flush=True)
                try:
                    data = os.path.join(work, "perf.data")
                    mpid, runs = record(launcher, peer, preload, args.kills, False, data)
                    timing = phases(parse(data), mpid, runs)
                    mpid, runs = record(launcher, peer, preload, args.kills, True, data)
                    cnt = phases(parse(data), mpid, runs)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    lines.append(f"{peer:<11} {mode:<10} error: {exc}")
                    continue
                if not timing or not cnt:
                    lines.append(f"{peer:<11} {mode:<10} no complete respawn in the trace")
                    continue
                cells = [statistics.fmean(r[c] for r in timing) * 1000 for c in cols]
                cells += [statistics.fmean(r[c] for r in cnt) for c in counts]
                lines.append(
                    f"{peer:<11} {mode:<10} "
                    + " ".join(f"{v:>11.2f}" for v in cells[: len(cols)])
                    + " "
                    + " ".join(f"{v:>11.0f}" for v in cells[len(cols) :])
                )
    finally:
        launcher.close()
        shutil.rmtree(work, ignore_errors=True)
    lines += ["", *(p.strip("\n") for p in __doc__.split("\n\n")[3:5])]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
