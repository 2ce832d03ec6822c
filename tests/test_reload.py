"""HUP: reload the config and the app, replace workers gracefully, never lose the old
ones to a broken app. Real processes, real files edited on disk."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from helpers import let_pass, loop_app, run_cli, slow_boot_app, wait_until

VERSIONED_APP = """
import os, time
VERSION = "{version}"
print(f"load {{VERSION}} pid={{os.getpid()}}", flush=True)
def after_fork(worker):
    print(f"boot {{VERSION}} nr={{worker.nr}} pid={{os.getpid()}}", flush=True)
def worker_start(worker):
    print(f"task {{VERSION}} nr={{worker.nr}} pid={{os.getpid()}}", flush=True)
    time.sleep({task})
    print(f"done {{VERSION}} nr={{worker.nr}} pid={{os.getpid()}}", flush=True)
"""


# As on a user's machine: __pycache__ gets written (the test runner may have it off).
WRITE_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


def write_app(path: Path, version: str, task: float = 0.05) -> None:
    """Rewrite the app in place; same size, and the old mtime kept (as `rsync -a`,
    `tar x` or `cp -p` of a deploy do): nothing stale may be run."""
    source = VERSIONED_APP.format(version=version, task=task)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        path.write_text(source)
        return
    path.write_text(source)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def booted(run, version: str) -> dict[int, int]:
    """nr -> pid of workers that printed `boot VERSION`."""
    found = re.findall(rf"boot {version} nr=(\d+) pid=(\d+)", run.stdout())
    return {int(nr): int(pid) for nr, pid in found}


def replaced_before_stopped(run, old: dict[int, int], new: dict[int, int]) -> None:
    """Each new worker was ready before the old one of its nr was reaped."""
    log = run.log()
    for nr, pid in new.items():
        # The child may log `ready` before the master logs `spawned pid=`.
        spawning = log.rindex(f"worker[{nr}] spawning..", 0, log.index(f"spawned pid={pid}"))
        ready = log.index(f"worker[{nr}] ready", spawning)
        reaped = log.index(f"reaped pid={old[nr]} worker[{nr}] status=exit 0")
        assert ready < reaped, log


@pytest.mark.parametrize("preload", [False, True])
def test_hup_picks_up_the_edited_app(start, tmp_path, preload):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start(
        "--app",
        str(app),
        "--workers",
        "2",
        *(["--preload"] if preload else []),
        env=WRITE_BYTECODE,
    )
    old = run.wait_ready(2)
    wait_until(lambda: len(booted(run, "v1")) == 2, 5, "v1 workers")
    write_app(app, "v2")
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    new = run.wait_workers(2)
    assert set(new.values()).isdisjoint(old.values())
    assert booted(run, "v2") == new
    wait_until(lambda: f"task v2 nr=1 pid={new[1]}" in run.stdout(), 5, "v2 tasks")
    replaced_before_stopped(run, old, new)
    # The old workers finished their task and left cleanly.
    out = run.stdout()
    for pid in old.values():
        assert out.count(f"task v1 nr=0 pid={pid}") + out.count(
            f"task v1 nr=1 pid={pid}"
        ) == out.count(f"done v1 nr=0 pid={pid}") + out.count(f"done v1 nr=1 pid={pid}")
    loaded_in = re.findall(r"load v2 pid=(\d+)", run.stdout())
    if preload:
        # The master loaded the new code, once; the workers inherit it.
        assert loaded_in == [str(run.pid)]
    else:
        # Each new worker loaded it afresh; the master never ran it.
        assert sorted(loaded_in) == sorted(str(pid) for pid in new.values())


def test_hup_rolls_a_few_at_a_time(start, tmp_path):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "4")
    old = run.wait_ready(4)
    write_app(app, "v2")
    run.signal(signal.SIGHUP)
    run.wait_log("reload done", timeout=15)
    new = run.wait_workers(4)
    assert booted(run, "v2") == new
    replaced_before_stopped(run, old, new)
    # With 4 workers, one replacement boots at a time: between two `spawning..`
    # of the new generation there is a `ready`.
    log = run.log()
    tail = log[log.index("HUP received") :]
    events = re.findall(r"(spawning\.\.|\] ready)", tail)
    booting = 0
    for event in events:
        booting += 1 if event.startswith("spawning") else -1
        assert booting <= 1, tail


@pytest.mark.parametrize("preload", [False, True])
@pytest.mark.parametrize(
    "broken, words",
    [
        ("def worker_start(worker)\n    pass\n", "SyntaxError"),
        ("raise RuntimeError('no database')\ndef worker_start(worker):\n    pass\n", "no database"),
        (
            "def after_fork(worker):\n    raise RuntimeError('no cache')\n"
            "def worker_start(worker):\n    pass\n",
            "status 3",
        ),
    ],
    ids=["syntax-error", "raises-at-import", "after-fork-raises"],
)
def test_hup_with_a_broken_app_keeps_the_old_workers(start, tmp_path, preload, broken, words):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "2", *(["--preload"] if preload else []))
    old = run.wait_ready(2)
    app.write_text(broken)
    run.signal(signal.SIGHUP)
    run.wait_log("reload failed")
    log = run.log()
    failed = [line for line in log.splitlines() if "reload failed" in line]
    assert len(failed) == 1, log
    if words == "no database" and not preload:
        # Without --preload the new worker finds out: it exits 3 before ready.
        run.wait_log(r"reaped pid=\d+ worker\[\d\] status=exit 3")
        assert "no database" in run.log()
        assert "status 3" in failed[0]
    else:
        assert words in failed[0], failed[0]
    # The old workers keep serving: same pids, still running tasks, none stopped.
    wait_until(lambda: run.stdout().count("task v1") >= 6, 5, "more v1 tasks")
    pause_until = time.monotonic() + 0.5
    wait_until(lambda: time.monotonic() >= pause_until, 2)
    assert run.worker_pids() == old
    assert not any(f"reaped pid={pid} " in run.log() for pid in old.values())
    # A fixed app and another HUP: now it reloads.
    write_app(app, "v3")
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    new = run.wait_workers(2)
    assert booted(run, "v3") == new
    replaced_before_stopped(run, old, new)


def test_broken_hup_after_ttin_keeps_every_old_worker(start, tmp_path):
    """Even workers above the configured count (TTIN) are not stopped for a
    reload that then fails: the new app is validated first."""
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "1")
    run.wait_ready(1)
    run.signal(signal.SIGTTIN)
    old = run.wait_ready(2)
    app.write_text("raise RuntimeError('broken deploy')\ndef worker_start(w):\n    pass\n")
    run.signal(signal.SIGHUP)
    run.wait_log("reload failed")
    run.wait_log(r"status=exit 3")
    until = time.monotonic() + 0.5
    wait_until(lambda: time.monotonic() >= until, 2)
    assert run.worker_pids() == old, run.log()
    assert not any(f"reaped pid={pid} " in run.log() for pid in old.values())


def test_hup_drops_ttin_and_brings_workers_back_after_winch(start, tmp_path):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "2")
    run.wait_ready(2)
    run.signal(signal.SIGTTIN)
    run.wait_ready(3)
    run.signal(signal.SIGHUP)  # back to the configured 2
    run.wait_log("reload done")
    run.wait_workers(2)
    run.signal(signal.SIGWINCH)
    run.wait_workers(0)
    run.signal(signal.SIGHUP)  # HUP during WINCH: the configured count comes back
    pids = run.wait_workers(2)
    assert sorted(pids) == [0, 1]
    run.wait_log("reload done", 2)


def test_ttou_while_a_reload_is_rolling(start, tmp_path):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "3")
    run.wait_ready(3)
    # The new version boots slowly, so the reload is still rolling at TTOU.
    app.write_text(
        VERSIONED_APP.format(version="v2", task=0.05).replace(
            "def after_fork(worker):\n", "def after_fork(worker):\n    time.sleep(0.5)\n"
        )
    )
    run.signal(signal.SIGHUP)
    run.wait_log(r"HUP received")
    run.signal(signal.SIGTTOU)
    run.wait_log("reload done", timeout=15)
    pids = run.wait_workers(2)
    assert sorted(pids) == [0, 1]
    assert booted(run, "v2").items() >= pids.items()
    assert "reload failed" not in run.log()


def test_hup_replacement_waits_graceful_timeout_then_kills(start, tmp_path):
    """An old worker that ignores QUIT is SIGKILLed --graceful-timeout after its
    replacement is ready."""
    grace = 0.8
    app = tmp_path / "app.py"
    write_app(app, "v1")
    app.write_text(
        app.read_text().replace(
            "def after_fork(worker):\n",
            "def after_fork(worker):\n"
            "    import signal\n"
            "    signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n",
        )
    )
    run = start("--app", str(app), "--workers", "1", "--graceful-timeout", str(grace))
    old = run.wait_ready(1)
    write_app(app, "v2")
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    asked = time.monotonic()
    log = run.wait_log(rf"reaped pid={old[0]} worker\[0\] status=killed by SIGKILL", timeout=10)
    assert time.monotonic() - asked < grace + 3
    assert f"worker[0] pid={old[0]} did not stop after SIGQUIT" in log
    new = run.wait_workers(1)
    assert booted(run, "v2") == new


def test_two_hups_in_a_row_end_on_the_last_app(start, tmp_path):
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "3")
    run.wait_ready(3)
    write_app(app, "v2")
    run.signal(signal.SIGHUP)
    run.wait_log(r"HUP received")
    write_app(app, "v3")
    run.signal(signal.SIGHUP)
    run.wait_log(r"HUP received", 2)
    run.wait_log("reload done", timeout=15)
    pids = run.wait_workers(3)
    assert booted(run, "v3").items() >= pids.items()
    assert "reload failed" not in run.log()


def test_a_respawn_without_hup_runs_the_file_as_it_is_on_disk_now(start, tmp_path):
    """The master compiles the app once and hands the code to new workers, but
    an edit on disk (in place, same size, old mtime) is never hidden by it: a
    worker replaced without a HUP runs the new file; the others keep theirs."""
    app = tmp_path / "app.py"
    write_app(app, "v1")
    run = start("--app", str(app), "--workers", "2", env=WRITE_BYTECODE)
    old = run.wait_ready(2)
    wait_until(lambda: len(booted(run, "v1")) == 2, 5, "v1 workers")
    for version, nr in (("v2", 1), ("v3", 0), ("v3", 1)):
        if not booted(run, version):
            write_app(app, version)
        victim = run.worker_pids()[nr]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda nr=nr, version=version, victim=victim: (
                booted(run, version).get(nr) not in (None, victim)
            ),
            10,
            f"worker[{nr}] replaced, running {version}; log:\n{run.log()[-2000:]}",
        )
        if version == "v2":
            assert run.worker_pids()[0] == old[0]  # not replaced: still runs v1
    assert run.worker_pids()[0] != old[0] and run.worker_pids()[1] != old[1]
    assert "reloading" not in run.log()  # no HUP was involved


# -- storms of HUPs, and a HUP during a reload -------------------------------------------


def test_a_storm_of_hups_forks_a_few_generations(start, app_file):
    run = start("--app", str(app_file(loop_app())), "--workers", "2")
    run.wait_ready(2)
    for _ in range(50):
        run.signal(signal.SIGHUP)
    run.wait_log("reload done", 1, 15)
    wait_until(lambda: run.count("reload done") == run.count("HUP received"), 15)
    assert run.count("HUP received") <= 3, run.log()
    # 2 workers at start, then 2 per reload at most.
    assert run.count(r"worker\[\d\] spawned pid=") <= 2 + 2 * 3


def test_a_hup_during_a_reload_keeps_the_proven_release_as_rollback(start, tmp_path: Path):
    """HUP 1 (3 workers) boots slowly; HUP 2 (4 workers, a broken app) fails: the
    master goes back to the 2 workers that ran before HUP 1, not to HUP 1's
    unproven 3, and keeps one worker per slot."""
    app, config, flag = tmp_path / "app.py", tmp_path / "conf.py", tmp_path / "slow"
    app.write_text(slow_boot_app(flag, 4))
    config.write_text(f"app = {str(app)!r}\nworkers = 2\n")
    sock = tmp_path / "ctl.sock"
    run = start("-c", str(config), "--control", str(sock), "--graceful-timeout", "5")
    run.wait_ready(2)
    flag.write_text("")
    config.write_text(f"app = {str(app)!r}\nworkers = 3\n")
    run.signal(signal.SIGHUP)
    run.wait_log("HUP received", 1)
    let_pass(1.2)  # past the HUP-storm window: the next HUP is a reload of its own
    broken = tmp_path / "broken.py"
    broken.write_text(
        "def after_fork(worker):\n    raise SystemExit(3)\ndef worker_start(worker):\n    pass\n"
    )
    config.write_text(f"app = {str(broken)!r}\nworkers = 4\n")
    run.signal(signal.SIGHUP)
    run.wait_log(r"reload failed: new worker\[\d\] exited before it was ready", 1, 15)
    flag.unlink()

    def settled() -> bool:
        reply = run_cli("ctl", "--control", str(sock), "status")
        status = json.loads(reply.stdout)
        return status["master"]["workers_wanted"] == 2 and len(run.workers()) == 2

    wait_until(settled, 15, "2 workers wanted and running")
    assert run.count("HUP received") == 2
