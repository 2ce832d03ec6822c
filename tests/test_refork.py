"""Reforking (--refork-after, `ctl refork`): real masters, molds and their forks.

Each app here builds a cache lazily over its first tasks and says, in
after_fork, whether it was forked from a mold (a flag only after_mold sets)
and how big the cache it started with was: a worker forked from the mold
starts warm.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from helpers import alive, ctl, ctl_metrics, run_cli, wait_until

APP = """
import os, sys, time
CACHE = []
MOLDED = False
TASK = {task}

def after_mold(worker):
    global MOLDED
    MOLDED = True
    print(f"after_mold {{os.getpid()}} cache={{len(CACHE)}}", flush=True)
    {after_mold}

def after_fork(worker):
    print(f"after_fork {{os.getpid()}} nr={{worker.nr}} molded={{MOLDED}} "
          f"cache={{len(CACHE)}} ppid={{os.getppid()}}", flush=True)
    {after_fork}

def worker_start(worker):
    if len(CACHE) < 500:
        CACHE.append(list(range(50)))
    {task_body}
    time.sleep(TASK)
"""


def refork_app(
    app_file,
    task: float = 0.005,
    after_mold: str = "pass",
    after_fork: str = "pass",
    task_body: str = "pass",
) -> Path:
    source = APP.format(
        task=task, after_mold=after_mold, after_fork=after_fork, task_body=task_body
    )
    return app_file(source)


def mold_pid(run, nth: int = 1) -> int:
    found = re.findall(r"mold pid=(\d+) ready", run.log())
    return int(found[nth - 1])


def promoted_pid(run, nth: int = 1) -> int:
    found = re.findall(r"pid=(\d+) becoming the mold", run.log())
    return int(found[nth - 1])


def forked_by_mold(run) -> set[int]:
    return {int(p) for p in re.findall(r"spawned pid=(\d+) \(from mold", run.log())}


def molded(run) -> dict[int, str]:
    """pid -> its after_fork line, for the workers that started from a mold."""
    lines = re.findall(r"after_fork (\d+) (.*molded=True.*)", run.stdout())
    return {int(pid): rest for pid, rest in lines}


def children(pid: int) -> dict[int, str]:
    found = {}
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found[child.pid] = child.name()
        except psutil.NoSuchProcess:
            continue
    return found


def wait_molds(run, count: int) -> None:
    wait_until(
        lambda: list(children(run.pid).values()).count("mold") == count,
        10,
        f"{count} mold(s) among {children(run.pid)}",
    )


def test_a_warm_worker_becomes_the_mold_and_every_worker_forks_from_it(start, app_file, tmp_path):
    control = tmp_path / "ctl.sock"
    app = refork_app(app_file)
    run = start(
        "--app", str(app), "--workers", "3", "--refork-after", "30", "--control", str(control)
    )
    run.wait_log(r"refork done: 3 workers forked from mold pid=\d+")
    mold = mold_pid(run)
    assert promoted_pid(run) == mold
    log = run.log()
    assert re.search(rf"worker\[\d\] pid={mold} becoming the mold \(after 30 tasks\)", log)
    workers = run.wait_workers(3)
    # Every worker is the master's own child, forked by the mold, and started warm.
    assert set(workers.values()) <= forked_by_mold(run)
    starts = molded(run)
    for pid in workers.values():
        assert pid in starts, run.stdout()
        assert int(re.search(r"cache=(\d+)", starts[pid]).group(1)) >= 30
        assert f"ppid={run.pid}" in starts[pid]
    assert children(run.pid)[mold] == "mold"
    assert psutil.Process(mold).cmdline()[0].startswith("unicornish mold")
    # status lists the mold with its state.
    code, reply = ctl(control, "status")
    assert code == 0
    states = {w["pid"]: w["state"] for w in reply["workers"]}
    assert states[mold] == "mold"
    assert sum(1 for s in states.values() if s != "mold") == 3
    # The master does not promote again: the list of counts has ended.
    wait_until(
        lambda: all(
            w["tasks"] > 60 for w in ctl(control, "status")[1]["workers"] if w["state"] != "mold"
        ),
        10,
        "workers past 60 tasks",
    )
    assert run.count("becoming the mold") == 1


@pytest.mark.parametrize("extra", [[], ["--preload"], ["--workers", "2:3"]])
def test_each_generation_uses_the_next_count_and_reforking_ends_with_the_list(
    start, app_file, extra
):
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "2", "--refork-after", "20,40", *extra)
    # With 2:3, the count grows to 3 as the workers are never idle.
    run.wait_log(r"refork done: \d workers", 2, timeout=20)
    log = run.log()
    assert "(after 20 tasks)" in log and "(after 40 tasks)" in log
    first, second = mold_pid(run, 1), mold_pid(run, 2)
    # The second mold was forked from the first; the first is retired (QUIT, exit 0).
    run.wait_log(rf"reaped pid={first} mold status=exit 0")
    wait_molds(run, 1)
    assert children(run.pid)[second] == "mold"
    wait_until(
        lambda: (
            len(run.worker_pids()) >= 2 and set(run.worker_pids().values()) <= forked_by_mold(run)
        ),
        10,
        "every worker forked by a mold",
    )


def test_off_by_default_and_ctl_refork_promotes_by_hand(start, app_file, tmp_path):
    control = tmp_path / "ctl.sock"
    # Mold-born workers take a second to boot: the rollout is still on at the second request.
    app = refork_app(app_file, after_fork="time.sleep(1) if MOLDED else None")
    run = start("--app", str(app), "--workers", "2", "--control", str(control))
    run.wait_ready(2)
    wait_until(
        lambda: all(w["tasks"] > 100 for w in ctl(control, "status")[1]["workers"]),
        10,
        "100 tasks each",
    )
    assert "mold" not in run.log()
    assert "mold" not in children(run.pid).values()
    before = {w["pid"] for w in ctl(control, "status")[1]["workers"]}
    code, reply = ctl(control, "refork")
    assert code == 0 and reply == {"ok": True}
    # A second one while the first rolls out is refused, with the reason.
    code, reply = ctl(control, "refork")
    assert code == 1 and reply["ok"] is False
    assert "under way" in reply["error"]
    run.wait_log("refork done: 2 workers forked from mold")
    assert "(ctl refork)" in run.log()
    # One of the workers that served (the busiest when the request came), now the mold.
    assert promoted_pid(run) in before
    assert children(run.pid)[promoted_pid(run)] == "mold"


def test_refork_with_no_ready_worker_is_refused(start, app_file, tmp_path):
    control = tmp_path / "ctl.sock"
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "0", "--control", str(control))
    run.wait_log("master process ready")
    wait_until(lambda: control.exists(), 10, "control socket")
    code, reply = ctl(control, "refork")
    assert code == 1 and reply["error"] == "no ready worker to promote"


def test_mold_born_workers_respawn_time_out_and_recycle_from_the_mold(start, app_file, tmp_path):
    stuck = tmp_path / "stuck"
    app = refork_app(
        app_file,
        task_body=(
            f"if MOLDED and os.path.exists({str(stuck)!r}): "
            f"os.unlink({str(stuck)!r}); time.sleep(60)"
        ),
    )
    run = start(
        "--app", str(app), "--workers", "2", "--refork-after", "10",
        "--timeout", "1", "--max-tasks", "400",
    )  # fmt: skip
    run.wait_log("refork done: 2 workers forked from mold")
    mold = mold_pid(run)
    # Respawn: a SIGKILLed worker's replacement comes from the mold, warm.
    victim = run.wait_workers(2)[0]
    os.kill(victim, signal.SIGKILL)
    run.wait_log(rf"reaped pid={victim} worker\[0\]")
    wait_until(lambda: len(forked_by_mold(run)) >= 3, 10, "a respawn from the mold")
    run.wait_workers(2)
    # --timeout: the heartbeat page reaches a mold-born worker (a memfd).
    stuck.write_text("")
    run.wait_log(r"timed out: task running for", timeout=10)
    run.wait_log(r"killed after its task timed out")
    # --max-tasks: recycled and replaced from the mold.
    run.wait_log(r"reached --max-tasks after \d+ tasks", timeout=20)
    wait_until(lambda: len(forked_by_mold(run)) >= 5, 20, "replacements from the mold")
    workers = run.wait_workers(2)
    assert set(workers.values()) <= forked_by_mold(run)
    assert children(run.pid)[mold] == "mold"


def test_ttin_spares_and_usr1_with_a_mold(start, app_file, tmp_path):
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "2", "--spares", "1", "--refork-after", "15")
    run.wait_log("refork done: 2 workers forked from mold")
    mold = mold_pid(run)
    # The spare of the old template is retired; the new one comes from the mold.
    run.wait_log(rf"spare spawned pid=\d+ \(from mold pid={mold}\)")
    run.signal(signal.SIGTTIN)
    run.wait_log(r"worker\[2\] spawned pid=\d+ \(from mold|worker\[2\] spawning.. \(a spare")
    workers = run.wait_workers(3)
    # A killed worker's slot goes to the spare forked from the mold (once one is there).
    wait_until(lambda: "spare" in children(run.pid).values(), 10, "a spare")
    os.kill(workers[1], signal.SIGKILL)
    run.wait_log(r"worker\[1\] spawning.. \(a spare takes the slot\)")
    workers = run.wait_workers(3)
    assert set(workers.values()) <= forked_by_mold(run)
    # USR1: the mold and its workers reopen the log file.
    rotated = Path(str(run.log_path) + ".1")
    os.rename(run.log_path, rotated)
    run.signal(signal.SIGUSR1)

    def log_fd_target(pid: int) -> set[str]:
        targets = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
        return targets

    wait_until(
        lambda: all(
            str(run.log_path) in log_fd_target(pid) and str(rotated) not in log_fd_target(pid)
            for pid in [mold, *run.worker_pids().values()]
        ),
        10,
        "every process writing to the new log file",
    )


def test_hup_goes_back_to_the_app_file_and_reforking_starts_over(start, app_file):
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "2", "--refork-after", "20")
    run.wait_log("refork done: 2 workers")
    first = mold_pid(run)
    run.signal(signal.SIGHUP)
    run.wait_log("reload done: 2 workers run the new app")
    run.wait_log(rf"reaped pid={first} mold status=exit 0")
    # The reloaded workers are forked by the master, and the count starts over.
    run.wait_log("refork done: 2 workers", 2, timeout=20)
    assert mold_pid(run, 2) != first
    wait_molds(run, 1)


def test_usr2_with_a_mold_hands_over_and_the_old_generation_exits(start, app_file, tmp_path):
    pid_file = tmp_path / "u.pid"
    app = refork_app(app_file)
    run = start(
        "--app", str(app), "--workers", "2", "--refork-after", "15", "--pid", str(pid_file),
        "--listen", f"unix:{tmp_path / 's.sock'}",
    )  # fmt: skip
    run.wait_log("refork done: 2 workers")
    old_children = set(children(run.pid))
    run.signal(signal.SIGUSR2)

    def new_master() -> int:
        try:
            pid = int(pid_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        return pid if pid != run.pid else 0

    wait_until(new_master, 10, "the new master's pid file")
    new_pid = new_master()
    run.seen.add(new_pid)
    wait_until(lambda: run.count(r"worker\[\d\] ready") >= 7, 15, "the new master's workers")
    run.signal(signal.SIGQUIT)
    run.wait_exit(15)
    wait_until(lambda: not any(psutil.pid_exists(p) for p in old_children), 10, "old children gone")
    # The new master runs on, and reforks on its own.
    run.wait_log("refork done: 2 workers", 2, timeout=20)
    run.seen.update(children(new_pid))
    os.kill(new_pid, signal.SIGQUIT)
    wait_until(lambda: not psutil.pid_exists(new_pid), 15, "new master gone")


def run_with_mold(start, app_file, *extra: str):
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "2", "--refork-after", "15", *extra)
    run.wait_log("refork done: 2 workers")
    wait_molds(run, 1)
    return run, [run.pid, *children(run.pid)]


@pytest.mark.parametrize("extra", [[], ["--drain", "0.5"]], ids=["quit", "drain"])
def test_graceful_stop_with_a_mold(start, app_file, extra):
    run, pids = run_with_mold(start, app_file, *extra)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 10, "all gone")
    assert f"reaped pid={mold_pid(run)} mold status=exit 0" in run.log()


def test_quick_stop_with_a_mold(start, app_file):
    run, pids = run_with_mold(start, app_file)
    run.signal(signal.SIGINT)
    run.wait_exit(15)
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 10, "all gone")


def test_master_death_ends_the_mold_and_its_workers(start, app_file):
    run, pids = run_with_mold(start, app_file)
    run.seen.update(pids)
    os.kill(run.pid, signal.SIGKILL)
    wait_until(
        lambda: not [p for p in pids[1:] if alive(p)],
        15,
        "mold and workers exit after their master",
    )


# -- failures: never worse than no reforking ------------------------------------------


def test_a_promoted_worker_killed_before_it_is_the_mold(start, app_file, tmp_path):
    # The first promotion hangs in after_mold until it is killed; the next one works.
    flag = tmp_path / "hang"
    flag.write_text("")
    hang = f"os.unlink({str(flag)!r}) or time.sleep(30) if os.path.exists({str(flag)!r}) else None"
    app = refork_app(app_file, after_mold=hang)
    run = start("--app", str(app), "--workers", "2", "--refork-after", "10")
    run.wait_log("becoming the mold")
    promoted = promoted_pid(run)
    wait_until(lambda: f"after_mold {promoted}" in run.stdout(), 10, "after_mold running")
    os.kill(promoted, signal.SIGKILL)
    run.wait_log(rf"refork failed: mold pid={promoted} exited before it was ready")
    # Its slot was refilled from the master at once; a worker that gets warm
    # later is promoted in its place.
    run.wait_log("refork done: 2 workers forked from mold")
    assert mold_pid(run) != promoted
    workers = run.wait_workers(2)
    assert set(workers.values()) <= forked_by_mold(run)


def test_a_mold_that_hangs_is_killed_after_the_graceful_timeout(start, app_file):
    app = refork_app(app_file, after_mold="time.sleep(60)")
    run = start(
        "--app", str(app), "--workers", "2", "--refork-after", "10", "--graceful-timeout", "1"
    )  # fmt: skip
    run.wait_log(r"mold pid=\d+ not ready after 1s; killing it, workers fork from the master")
    run.wait_log(r"reaped pid=\d+ mold status=killed by SIGKILL")
    run.wait_workers(2)
    assert not forked_by_mold(run)


def test_a_mold_killed_during_the_rollout_and_after_it(start, app_file, tmp_path):
    # Mold-born workers take a while to be ready: the rollout is slow enough to
    # kill the mold in the middle of it.
    app = refork_app(app_file, after_fork="time.sleep(1.0) if MOLDED else None")
    run = start("--app", str(app), "--workers", "3", "--refork-after", "10")
    run.wait_log(r"spawned pid=\d+ \(from mold")
    mold = mold_pid(run)
    os.kill(mold, signal.SIGKILL)
    run.wait_log(rf"mold pid={mold} died; new workers fork from the master")
    run.wait_log(rf"refork done: 3 workers \(\d forked from mold pid={mold} before it was given up")
    workers = run.wait_workers(3)
    assert "mold" not in children(run.pid).values()
    # Later respawns fork from the master.
    before = len(forked_by_mold(run))
    os.kill(workers[2], signal.SIGKILL)
    run.wait_log(rf"reaped pid={workers[2]}")
    run.wait_workers(3)
    assert len(forked_by_mold(run)) == before


def test_a_mold_that_stops_answering_is_given_up(start, app_file):
    app = refork_app(app_file, after_fork="time.sleep(1.0) if MOLDED else None")
    run = start("--app", str(app), "--workers", "3", "--refork-after", "10")
    run.wait_log(r"spawned pid=\d+ \(from mold")
    mold = mold_pid(run)
    os.kill(mold, signal.SIGSTOP)
    run.wait_log(
        rf"mold pid={mold} cannot fork worker\[\d\]: no answer in 2s; forking from the master"
    )
    run.wait_log(rf"reaped pid={mold} mold status=killed by SIGKILL")
    run.wait_log("refork done: 3 workers")
    run.wait_workers(3)


def test_mold_born_workers_that_fail_to_boot_abandon_the_generation(start, app_file):
    app = refork_app(app_file, after_fork="if MOLDED: raise RuntimeError('no connection')")
    run = start("--app", str(app), "--workers", "2", "--refork-after", "10")
    run.wait_log(r"refork failed: new worker\[\d\] exited before it was ready")
    mold = mold_pid(run)
    run.wait_log(rf"reaped pid={mold} mold status=exit 0")
    # Workers that get warm later are promoted in turn, and fail the same way:
    # after three in a row, reforking is off until HUP.
    run.wait_log("refork: 3 failed promotions in a row; off until HUP", timeout=20)
    assert run.count(r"refork failed: new worker\[\d\] exited before it was ready") == 3
    # The last failed generation's workers are gone (each mold-born one failed its
    # boot, exit 3), and what serves came from the master.
    wait_until(
        lambda: not set(run.worker_pids().values()) & forked_by_mold(run),
        10,
        "no worker forked by a mold",
    )
    run.wait_workers(2)
    assert "refork done" not in run.log()


def test_chaos_with_reforking(start, app_file):
    app = refork_app(app_file, task=0.002)
    run = start(
        "--app", str(app), "--workers", "3", "--spares", "1", "--refork-after", "10,20,40,80,160"
    )  # fmt: skip
    run.wait_ready(3)
    rng = random.Random(14)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        kids = children(run.pid)
        targets = [p for p, name in kids.items() if name in ("mold", "spare") or "worker" in name]
        if targets:
            try:
                os.kill(rng.choice(targets), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(rng.uniform(0.05, 0.3))  # pacing the kills, not waiting for anything
    workers = run.wait_workers(3, timeout=20)
    assert len(workers) == 3
    assert "Traceback" not in run.log()
    pids = [run.pid, *children(run.pid)]
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(20) == 0
    wait_until(lambda: not any(alive(p) for p in pids), 10, "everything gone")


def test_bad_refork_after_is_one_line_and_exit_2(app_file):
    app = refork_app(app_file)
    for bad in ("0,5", "abc", "5,,6", "-3"):
        result = run_cli("--app", str(app), "--refork-after", bad)
        assert result.returncode == 2, (bad, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--refork-after" in lines[0], (bad, result.stderr)
        assert "Traceback" not in result.stderr


# Once QUIET exists, a worker says so (a file named after its pid) and does no
# more tasks: its turns only wait (worker.no_task()), so neither count moves.
METRICS_APP = """
import os, time
from unicornish.metrics import appmetrics
JOBS = appmetrics.counter("jobs", "Jobs done")
QUIET = {quiet!r}
said = False

def worker_start(worker):
    global said
    if os.path.exists(QUIET):
        if not said:
            open(QUIET + "-" + str(os.getpid()), "w").close()
            said = True
        with worker.idle():
            time.sleep(0.003)
        return worker.no_task()
    JOBS.inc()
    time.sleep(0.003)
"""


def test_counters_never_go_down_across_promotions_and_retired_molds(start, app_file, tmp_path):
    control, quiet = tmp_path / "ctl.sock", tmp_path / "quiet"
    app = app_file(METRICS_APP.format(quiet=str(quiet)))
    run = start(
        "--app", str(app), "--workers", "2", "--refork-after", "40,80", "--control", str(control)
    )  # fmt: skip
    run.wait_ready(2)
    wait_until(control.exists, 10, "control socket")
    seen: list[tuple[float, float]] = []

    def sample() -> bool:
        values = ctl_metrics(control)
        tasks = sum(
            v for k, v in values.items() if k.startswith("unicornish_worker_tasks_completed")
        )
        seen.append((values.get("jobs_total", 0.0), tasks))
        return run.count("reaped pid=\\d+ mold status=exit 0") >= 1 and len(seen) > 3

    wait_until(sample, 30, "a promotion, a second one and the first mold retired")
    # The two counts are read one after the other in a scrape while the workers
    # go on (one task every 3 ms each): on a busy machine the app's count, read
    # last, ran ahead of the master's by as much as a descheduled master let it.
    # Compared once the workers have stopped working, they must be equal.
    quiet.write_text("")

    def all_quiet() -> bool:
        workers = [w for w in ctl(control, "status")[1]["workers"] if w["state"] != "mold"]
        return len(workers) == 2 and all(Path(f"{quiet}-{w['pid']}").exists() for w in workers)

    wait_until(all_quiet, 10, "both workers past their last task")
    sample()
    jobs = [j for j, _ in seen]
    tasks = [t for _, t in seen]
    assert jobs == sorted(jobs), seen
    assert tasks == sorted(tasks), seen
    # Every task was counted once, by the app and by the master alike.
    assert jobs[-1] == tasks[-1], seen[-1]


def test_a_worker_killed_in_its_last_task_after_the_promotion_signal(start, app_file, tmp_path):
    flag, inside, taken = (tmp_path / name for name in ("hold", "inside", "taken"))
    control = tmp_path / "ctl.sock"
    # With the flag, a task says it has begun and waits for the promotion
    # (worker.alive turns False), then stays in the task: the window between
    # the signal and after_mold, made as long as the test needs.
    app = refork_app(
        app_file,
        task_body=(
            f"if os.path.exists({str(flag)!r}):\n"
            f"        open({str(inside)!r}, 'w').close()\n"
            "        deadline = time.monotonic() + 30\n"
            "        while worker.alive and time.monotonic() < deadline: time.sleep(0.005)\n"
            f"        os.rename({str(flag)!r}, {str(taken)!r}); time.sleep(30)"
        ),
    )
    run = start("--app", str(app), "--workers", "1", "--control", str(control))
    run.wait_ready(1)
    flag.write_text("")
    wait_until(inside.exists, 10, "the worker in a task")
    code, reply = ctl(control, "refork")
    assert code == 0, reply
    promoted = promoted_pid(run)
    wait_until(taken.exists, 10, "the promoted worker still in its last task")
    os.kill(promoted, signal.SIGKILL)
    run.wait_log(rf"refork failed: mold pid={promoted} exited before it was ready")
    assert f"after_mold {promoted}" not in run.stdout()
    run.wait_workers(1)


KILL_AT_FORK = """
import os, time, psutil

def before_fork(worker):
    # In the master: once the flag is there, the mold dies right before a request.
    if not os.path.exists({flag!r}):
        return
    os.unlink({flag!r})
    for child in psutil.Process().children():
        if child.name() == "mold":
            child.kill()
            deadline = time.monotonic() + 5
            while child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                time.sleep(0.01)
"""


def test_a_mold_killed_when_it_is_asked_to_fork(start, app_file, tmp_path):
    flag = tmp_path / "kill-mold"
    config = tmp_path / "conf.py"
    config.write_text(KILL_AT_FORK.format(flag=str(flag)))
    app = refork_app(app_file, after_fork="time.sleep(1.0) if MOLDED else None")
    run = start("--app", str(app), "--workers", "3", "--refork-after", "10", "-c", str(config))
    run.wait_log(r"spawned pid=\d+ \(from mold")
    mold = mold_pid(run)
    flag.write_text("")
    run.wait_log(rf"mold pid={mold} cannot fork worker\[\d\]: .*; forking from the master")
    run.wait_log(rf"reaped pid={mold} mold status=killed by SIGKILL")
    run.wait_log(rf"refork done: 3 workers \(\d forked from mold pid={mold} before it was given up")
    run.wait_workers(3)


def test_max_memory_recycles_a_mold_born_worker(start, app_file, tmp_path):
    flag = tmp_path / "grow"
    app = refork_app(
        app_file,
        task_body=(
            f"if MOLDED and os.path.exists({str(flag)!r}): "
            f'os.unlink({str(flag)!r}); CACHE.append(b"x" * (80 << 20))'
        ),
    )
    run = start("--app", str(app), "--workers", "2", "--refork-after", "10", "--max-memory", "60")
    run.wait_log("refork done: 2 workers forked from mold")
    flag.write_text("")
    log = run.wait_log(r"pid=\d+ uses [\d.]+ MiB USS, over --max-memory 60 MiB", timeout=15)
    grown = int(re.search(r"pid=(\d+) uses [\d.]+ MiB USS", log).group(1))
    assert grown in forked_by_mold(run)
    run.wait_log(rf"reaped pid={grown} worker\[\d\]")
    wait_until(lambda: len(forked_by_mold(run)) >= 3, 10, "its replacement from the mold")
    run.wait_workers(2)


def test_reforking_with_user_keeps_every_process_the_users(start):
    from other_user import open_dir, temp_user

    with temp_user() as user, open_dir() as shared:
        app = shared / "app.py"
        app.write_text(
            APP.format(task=0.005, after_mold="pass", after_fork="pass", task_body="pass")
        )
        log_path = shared / "unicornish.host.log"
        run = start(
            "--app", str(app), "--workers", "2", "--user", user.name, "--refork-after", "10",
            "--log-file", str(log_path), log_file=False,
        )  # fmt: skip
        run.log_path = log_path
        run.wait_log("refork done: 2 workers forked from mold")
        mold = mold_pid(run)
        workers = run.wait_workers(2)
        assert set(workers.values()) <= forked_by_mold(run)
        for pid in [mold, *workers.values()]:
            assert tuple(psutil.Process(pid).uids()) == (user.uid,) * 3
        # The master's death still ends them: the death signal outlived the uid change.
        pids = [mold, *workers.values()]
        run.seen.update(pids)
        os.kill(run.pid, signal.SIGKILL)
        wait_until(lambda: not [p for p in pids if alive(p)], 15, "all gone")


def test_refork_after_from_the_config_file(start, app_file, tmp_path):
    app = refork_app(app_file)
    config = tmp_path / "conf.py"
    config.write_text(f"app = {str(app)!r}\nworkers = 2\nrefork_after = [15, 30]\n")
    run = start("-c", str(config))
    run.wait_log("refork done: 2 workers", 2, timeout=20)
    assert "(after 15 tasks)" in run.log() and "(after 30 tasks)" in run.log()


def test_crash_backoff_and_ttou_with_mold_born_workers(start, app_file, tmp_path):
    flag = tmp_path / "crash"
    app = refork_app(
        app_file,
        task_body=f"if MOLDED and os.path.exists({str(flag)!r}): raise RuntimeError('boom')",
    )
    run = start("--app", str(app), "--workers", "3", "--refork-after", "10")
    run.wait_log("refork done: 3 workers forked from mold")
    # Mold-born workers that die right after they start are held back like any.
    flag.write_text("")
    run.wait_log(r"worker\[\d\] died soon after spawning \(\d+ times in a row\): crash loop", 1, 20)
    flag.unlink()
    workers = run.wait_workers(3, timeout=20)
    assert set(workers.values()) <= forked_by_mold(run)
    run.signal(signal.SIGTTOU)
    run.wait_log("TTOU: 2 workers wanted")
    workers = run.wait_workers(2)
    assert set(workers.values()) <= forked_by_mold(run)
    assert children(run.pid)[mold_pid(run)] == "mold"


def test_a_sigurg_the_master_did_not_send_is_ignored(start, app_file, tmp_path):
    # The kernel sends SIGURG for TCP urgent data to a socket the app gave an
    # owner: a worker becomes the mold only when the master asked for it.
    control = tmp_path / "ctl.sock"
    app = refork_app(app_file)
    run = start("--app", str(app), "--workers", "1", "--control", str(control))
    pid = run.wait_ready(1)[0]
    wait_until(control.exists, 10, "control socket")
    os.kill(pid, signal.SIGURG)

    def tasks() -> int:
        return int(ctl(control, "status")[1]["workers"][0]["tasks"])

    after = tasks()
    wait_until(lambda: tasks() > after + 20, 10, "tasks going on after SIGURG")
    assert run.worker_pids() == {0: pid}
    assert "mold" not in run.log()
