"""Scenario 13 (issue 14): reforking, against state that workers build lazily.

8 workers of an app whose state is built over each worker's first tasks
(apps/lazy.py: `heap`, ~64 MiB of objects; `stdlib`, 144 modules imported;
`none`, the empty baseline), under unicornish without reforking, unicornish
with `--refork-after 100`, and gunicorn with `preload_app` (all preloaded).
Each worker runs BENCH_LAZY_TASKS (200) tasks back to back, then idles. A warm
task reads 8 records or module attributes; the refork and gunicorn runs are
repeated with warm tasks that read nothing, since every read changes reference
counts and so un-shares the pages it touches, and reforking once more with
2000 tasks per worker, since that un-sharing goes on with every task.

Memory, once every worker of the last generation has run its tasks: PSS
and USS from /proc/PID/smaps_rollup of the master, the 8 workers and the mold.
"Extra PSS per worker, % of the state" is (PSS per worker with the app - PSS
per worker of the same server with `none`) / the state's size in one process
(the USS growth of a worker that built it, from before its first task to its
first full-speed task; the median over the workers that built it).

Respawn: SIGKILL a worker of the last generation, time until its replacement
has completed its first task at full speed (lazy.py's `warm` announcement).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from dataclasses import dataclass
from typing import Any

from harness import BenchError, Msg, children_of, summary
from scenarios import Ctx, Row, Value, _err, _fill_missing, _num, _report_error, smaps_rollup
from servers import Master

SCENARIO = "13 refork"
WORKERS = 8
TASKS = 200  # per worker: the 64 (heap) or 36 (stdlib) building tasks, then warm ones
REFORK_AFTER = 100  # past the build: the mold holds the whole state
READS = 8  # lookups per warm task (lazy_heap.py, lazy_stdlib.py)
NO_REFORK = "no reforking"
REFORK = f"--refork-after {REFORK_AFTER}"
GUNICORN = "gunicorn --preload"
# The same two, but the warm tasks read nothing: what sharing alone gives, before
# CPython's reference counting un-shares the pages that the reads touch.
REFORK_R0 = f"{REFORK}, no reads"
GUNICORN_R0 = f"{GUNICORN}, no reads"
# And with 10x the tasks: the reads keep un-sharing pages, so the cost of a
# mold-born worker grows with the tasks it has run since it was forked.
LONG_TASKS = 2000
REFORK_LONG = f"{REFORK}, {LONG_TASKS} tasks"
# A second promotion on the way: the next generation forks from a mold that has
# run 1000 tasks, and shares again what the first generation's reads copied.
REFORK_TWICE_AFTER = f"{REFORK_AFTER},1000"
REFORK_TWICE = f"--refork-after {REFORK_TWICE_AFTER}, {LONG_TASKS} tasks"


@dataclass(frozen=True)
class Variant:
    peer: str
    refork: bool
    reads: int
    apps: tuple[str, ...] = ("heap", "stdlib", "none")
    kills: bool = True  # time respawns in this variant
    tasks: int = TASKS  # per worker
    refork_after: str = str(REFORK_AFTER)


VARIANTS = {
    NO_REFORK: Variant("unicornish", False, READS),
    REFORK: Variant("unicornish", True, READS),
    GUNICORN: Variant("gunicorn", False, READS),
    # `none` reads nothing anyway: these two use the baselines above.
    REFORK_R0: Variant("unicornish", True, 0, ("heap", "stdlib"), kills=False),
    GUNICORN_R0: Variant("gunicorn", False, 0, ("heap", "stdlib"), kills=False),
    REFORK_LONG: Variant("unicornish", True, READS, ("heap", "stdlib"), False, LONG_TASKS),
    REFORK_TWICE: Variant(
        "unicornish", True, READS, ("heap",), False, LONG_TASKS, REFORK_TWICE_AFTER
    ),
}
BASELINE = {REFORK_R0: REFORK, GUNICORN_R0: GUNICORN, REFORK_LONG: REFORK, REFORK_TWICE: REFORK}


class Unsupported(BenchError):
    """This unicornish has no --refork-after (the master refused the option)."""


def _log_text(m: Master) -> str:
    try:
        with open(m.log, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _by_kind(msgs: list[Msg], kind: str, since: int = 0) -> dict[int, Msg]:
    """pid -> its first message of this kind (from index `since`)."""
    out: dict[int, Msg] = {}
    for x in msgs[since:]:
        if x.kind == kind and x.pid not in out:
            out[x.pid] = x
    return out


def _generation(m: Master) -> tuple[list[int], int | None]:
    """(the master's children that ran the app and are not the mold, the mold's pid)."""
    ran = _by_kind(m.msgs(), "ready")
    workers, mold = [], None
    for pid in children_of(m.pid):
        if _comm(pid) == "mold":
            mold = pid
        elif pid in ran:
            workers.append(pid)
    return sorted(workers), mold


def _wait(ctx: Ctx, m: Master, what: str, pred: Any, timeout: float) -> Any:
    """Wait until pred() is truthy (re-checked on every announcement and every 0.5 s)."""

    def check(_msgs: list[Msg]) -> Any:
        if m.pid in ctx.launcher.reaper.statuses:
            return "dead"
        return pred()

    try:
        got = ctx.launcher.ann.wait(m.inbox, check, timeout)
    except BenchError:
        raise BenchError(f"{m.peer}: timed out waiting for {what}; log:\n{m.log_tail()}") from None
    if got == "dead":
        text = _log_text(m)
        if "--refork-after" in text and ("unrecognized" in text or "no such" in text):
            raise Unsupported("this unicornish has no --refork-after")
        raise BenchError(f"{m.peer}: master exited early; log:\n{m.log_tail()}")
    return got


def _settled(m: Master) -> tuple[list[int], int | None] | None:
    """The generation once it is WORKERS workers that have all run their tasks."""
    workers, mold = _generation(m)
    done = _by_kind(m.msgs(), "done")
    if len(workers) == WORKERS and all(p in done for p in workers):
        return workers, mold
    return None


def _memory(m: Master, workers: list[int], mold: int | None) -> dict[str, Any]:
    master = smaps_rollup(m.pid)
    ws = [smaps_rollup(p) for p in workers]
    md = smaps_rollup(mold) if mold else None
    pss = [w["Pss"] for w in ws]
    return {
        "master_pss": master["Pss"],
        "mold_pss": md["Pss"] if md else None,
        "mold_uss": md["Uss"] if md else None,
        "worker_pss": pss,
        "worker_uss": [w["Uss"] for w in ws],
        "worker_pss_mean": statistics.fmean(pss),
        "worker_uss_mean": statistics.fmean(w["Uss"] for w in ws),
        # What 8 workers cost in all: the master and the mold included.
        "total_pss": master["Pss"] + sum(pss) + (md["Pss"] if md else 0),
    }


def _respawns(ctx: Ctx, m: Master, workers: list[int], kills: int) -> dict[str, Any]:
    """SIGKILL one worker at a time; its replacement's first task, first full-speed task."""
    live = list(workers)
    seen = set(_by_kind(m.msgs(), "ready"))
    warm, first, inherited = [], [], 0
    for i in range(kills):
        victim = live[i % len(live)]
        idx = len(m.msgs())
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced(idx: int = idx) -> tuple[int, Msg, Msg] | None:
            w = {p: x for p, x in _by_kind(m.msgs(), "warm", idx).items() if p not in seen}
            done = _by_kind(m.msgs(), "done", idx)
            for pid, x in w.items():
                if pid in done:  # its whole active phase: the next kill finds a quiet machine
                    return pid, _by_kind(m.msgs(), "ready", idx)[pid], x
            return None

        pid, ready, w = _wait(ctx, m, "a replacement worker", replaced, 60)
        first.append(ready.t - t0)
        warm.append(w.t - t0)
        inherited += w.extra[1] == "0"  # it built nothing itself: forked warm
        seen.add(pid)
        live[live.index(victim)] = pid
    return {
        "to_first_task_s": first,
        "to_full_speed_s": warm,
        "replacements_forked_warm": inherited,
        "kills": kills,
    }


def refork_once(ctx: Ctx, v: Variant, app: str, kills: int) -> dict[str, Any]:
    L = ctx.launcher
    args = ["--refork-after", v.refork_after] if v.refork else []
    env = {"BENCH_LAZY": app, "BENCH_LAZY_TASKS": str(v.tasks), "BENCH_LAZY_READS": str(v.reads)}
    m = L.start(v.peer, WORKERS, app="lazy", preload=True, extra_env=env, extra_args=args)
    try:
        t0 = time.monotonic()
        enough = lambda: len(_by_kind(m.msgs(), "done")) >= WORKERS  # noqa: E731
        _wait(ctx, m, f"{WORKERS} workers done", enough, 120)
        res: dict[str, Any] = {}
        if v.refork:
            reforks = v.refork_after.count(",") + 1
            _wait(
                ctx,
                m,
                f"{reforks} x 'refork done:' in the log",
                lambda: _log_text(m).count("refork done:") >= reforks,
                120,
            )
            res["refork_done_s"] = time.monotonic() - t0
        workers, mold = _wait(ctx, m, "the last generation done", lambda: _settled(m), 120)
        if v.refork and mold is None:
            raise BenchError("refork done, but no child titled 'mold'")
        time.sleep(0.5)  # the announcements come right before the last task returns
        res.update(_memory(m, workers, mold))
        states = [int(x.extra[0]) for x in m.msgs() if x.kind == "state"]
        res["state_bytes"] = statistics.median(states) if states else 0
        res["state_samples"] = states
        warm = _by_kind(m.msgs(), "warm")
        res["workers_forked_warm"] = sum(warm[p].extra[1] == "0" for p in workers if p in warm)
        if kills and app != "none":
            res["respawn"] = _respawns(ctx, m, workers, kills)
        return res
    finally:
        L.stop(m)


def _share(res: dict[str, Any] | str | None, base: dict[str, Any] | str | None) -> Value:
    """Extra PSS per worker over the `none` app, as a % of the state's size."""
    if not isinstance(res, dict) or not isinstance(base, dict) or not res.get("state_bytes"):
        return res if isinstance(res, str) else base if isinstance(base, str) else "error"
    return 100.0 * (res["worker_pss_mean"] - base["worker_pss_mean"]) / res["state_bytes"]


def s13_refork(ctx: Ctx) -> list[Row]:
    kills = 2 if ctx.quick else 5
    raw: dict[str, dict[str, Any]] = {name: {} for name in VARIANTS}
    for variant, v in VARIANTS.items():
        for app in v.apps:
            if ctx.missing(v.peer):
                raw[variant][app] = "not installed"
                continue
            if isinstance(raw[variant].get("heap"), str) and "refork-after" in raw[variant]["heap"]:
                raw[variant][app] = raw[variant]["heap"]  # no --refork-after: do not retry
                continue
            ctx.log(f"13 refork {variant} [{app}]: {WORKERS} workers x {v.tasks} tasks")
            try:
                raw[variant][app] = refork_once(ctx, v, app, kills if v.kills else 0)
            except Unsupported as exc:
                raw[variant][app] = f"n/a: {exc}"
                ctx.log(f"  {exc}")
            except (BenchError, OSError, ValueError, IndexError, KeyError) as exc:
                _report_error(ctx, f"refork {variant} {app}", exc)
                raw[variant][app] = _err(exc)
    ctx.raw["refork"] = raw
    return _rows(ctx, raw, kills)


def _rows(ctx: Ctx, raw: dict[str, dict[str, Any]], kills: int) -> list[Row]:
    mib = 1.0 / (1 << 20)
    na = {"unicorn": "no lazy Ruby app"}

    not_run = "n/a: not run (own copy)"

    def val(variant: str | None, app: str, key: str, scale: float = 1.0) -> Value:
        if variant is None:
            return not_run
        r = raw[variant].get(app)
        if not isinstance(r, dict):
            return r or "error"
        v = r.get(key)
        return v * scale if isinstance(v, (int, float)) else "error: none"

    def share(variant: str | None, app: str) -> Value:
        if variant is None:
            return not_run
        return _share(raw[variant].get(app), raw[BASELINE.get(variant, variant)].get("none"))

    def row(metric: str, unit: str, mine: Value, theirs: Value, **kw: Any) -> Row:
        vals: dict[str, Value] = {"unicornish": mine, "gunicorn": theirs}
        _fill_missing(ctx, vals, na)
        return Row(SCENARIO, metric, unit, vals, **kw)

    def respawn(variant: str, app: str) -> Value:
        r = raw[variant].get(app)
        if isinstance(r, dict) and "respawn" in r:
            return summary(r["respawn"]["to_full_speed_s"])["p50"] * 1000
        return r if isinstance(r, str) else "error"

    rows: list[Row] = []
    for app in ("heap", "stdlib"):
        rows.append(
            row(
                f"{app}: lazily built state, one worker",
                "MiB",
                val(NO_REFORK, app, "state_bytes", mib),
                val(GUNICORN, app, "state_bytes", mib),
                compare=False,
            )
        )
        pairs = (
            (NO_REFORK, GUNICORN),
            (REFORK, GUNICORN),
            (REFORK_R0, GUNICORN_R0),
            (REFORK_LONG, None),  # gunicorn: each worker has its own copy whatever it reads
            (REFORK_TWICE, None),
        )
        for variant, theirs in pairs:
            if app not in VARIANTS[variant].apps:
                continue
            rows.append(
                row(
                    f"{app}: PSS per worker (8), {variant}",
                    "MiB",
                    val(variant, app, "worker_pss_mean", mib),
                    val(theirs, app, "worker_pss_mean", mib),
                )
            )
            if variant in (NO_REFORK, REFORK):
                rows.append(
                    row(
                        f"{app}: total PSS, {variant}",
                        "MiB",
                        val(variant, app, "total_pss", mib),
                        val(theirs, app, "total_pss", mib),
                    )
                )
            r = row(
                f"{app}: extra PSS per worker, % of the state, {variant}",
                "%",
                share(variant, app),
                share(theirs, app),
            )
            if variant == REFORK:
                r.target = "< 15%"
                v = r.values["unicornish"]
                r.met = (v < 15.0) if _num(v) else None  # type: ignore[operator]
            rows.append(r)
        for variant in (NO_REFORK, REFORK):
            rows.append(
                row(
                    f"{app}: respawn to first full-speed task, {variant}",
                    "ms",
                    respawn(variant, app),
                    respawn(GUNICORN, app),
                )
            )
    for variant in (NO_REFORK, REFORK):
        rows.append(
            row(
                f"none (baseline): PSS per worker (8), {variant}",
                "MiB",
                val(variant, "none", "worker_pss_mean", mib),
                val(GUNICORN, "none", "worker_pss_mean", mib),
                compare=False,
            )
        )
    rows[0].note = (
        f"8 workers x {TASKS} tasks each, all preloaded; gunicorn: preload_app, the same tasks"
        f" as WSGI requests; a warm task reads {READS} records (heap) or module attributes"
        f" (stdlib), '{REFORK_R0}': none; '{REFORK_LONG}': {LONG_TASKS} tasks per worker,"
        " gunicorn not run (its workers share none of the state whatever they read);"
        " total PSS = master + 8 workers (+ the mold with"
        f" {REFORK}); % of the state = (PSS per worker - with the empty app) / the state's USS"
        f" in one worker; respawn: p50 of {kills} SIGKILLs, to the end of the replacement's"
        " first task with its state complete"
    )
    return rows
