"""The master and the worker loop (issue 2): real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import EXAMPLES, gone, loop_app, slow_task_app, wait_until


def test_spawns_n_workers_with_titles(start, app_file):
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "3")
    pids = run.wait_ready(3)
    assert sorted(pids) == [0, 1, 2]
    for nr, pid in pids.items():
        proc = psutil.Process(pid)
        assert proc.name() == f"worker[{nr}]"
        assert proc.ppid() == run.pid
        assert " ".join(proc.cmdline()).startswith(f"unicornish worker[{nr}] app.py")
    master = psutil.Process(run.pid)
    assert master.name() == "unicornish"
    assert " ".join(master.cmdline()).startswith(f"unicornish master {app}")
    log = run.log()
    assert f"master process ready pid={run.pid}" in log
    assert "spawning 3 missing workers:" in log
    for nr, pid in pids.items():
        assert f"worker[{nr}] spawned pid={pid}" in log
    # Lines start with an ISO-8601 timestamp and the writer's pid in brackets
    # (two masters share a log during a USR2): the master's for its lines, each
    # worker's for the lines it writes itself.
    for line in log.splitlines():
        if line.startswith("["):
            assert re.match(r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d #\d+\] ", line), line
    assert re.search(rf"^\[\S+ #{run.pid}\] master process ready pid={run.pid}$", log, re.M)
    for nr, pid in pids.items():
        assert re.search(rf"^\[\S+ #{run.pid}\] worker\[{nr}\] spawned pid={pid}$", log, re.M)
        assert re.search(rf"^\[\S+ #{pid}\] worker\[{nr}\] ready$", log, re.M), nr


def test_master_title_names_the_app_as_given_and_the_first_listen_address(start, tmp_path):
    """`ps ax | grep myproject` finds the master; two masters of one app differ."""
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(loop_app())
    sock = tmp_path / "app.sock"
    by_module = start(
        "--app", "myproject.tasks", "--listen", f"unix:{sock}", "--listen", "127.0.0.1:0",
        cwd=tmp_path,
    )  # fmt: skip
    by_path = start("--app", "myproject/tasks.py", cwd=tmp_path)
    by_module.wait_ready(1)
    by_path.wait_ready(1)
    # setproctitle pads the old argv area: psutil sees trailing empty arguments.
    titles = {
        r.pid: " ".join(psutil.Process(r.pid).cmdline()).rstrip() for r in (by_module, by_path)
    }
    assert titles[by_module.pid] == f"unicornish master myproject.tasks unix:{sock}", titles
    assert titles[by_path.pid] == "unicornish master myproject/tasks.py", titles
    # Workers keep their short title.
    for pid in by_path.worker_pids().values():
        assert " ".join(psutil.Process(pid).cmdline()).rstrip() == "unicornish worker[0] tasks.py"


def test_zero_workers_allowed(start, app_file):
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "0")
    run.wait_log("master process ready")
    assert run.workers() == []
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0


@pytest.mark.parametrize("preload", [False, True])
def test_killed_worker_is_replaced_at_once_with_same_nr(start, app_file, preload):
    app = app_file(loop_app())
    args = ["--app", str(app), "--workers", "2", "--poll", "30"] + (
        ["--preload"] if preload else []
    )
    run = start(*args)
    pids = run.wait_ready(2)
    victim = pids[1]
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    wait_until(
        lambda: run.worker_pids().get(1) not in (None, victim),
        timeout=1.0,
        what="a replacement worker[1] within a second",
    )
    assert time.monotonic() - started < 1.0
    assert run.worker_pids()[0] == pids[0]
    run.wait_log(rf"reaped pid={victim} worker\[1\] status=killed by SIGKILL")


def test_master_sigkill_lets_workers_finish_their_task(start, app_file):
    app = app_file(slow_task_app())
    run = start("--app", str(app), "--workers", "2")
    pids = run.wait_workers(2)
    wait_until(lambda: run.stdout().count("task start") >= 2, 5, "tasks to start")
    os.kill(run.pid, signal.SIGKILL)
    run.wait_exit(2)
    for pid in pids.values():
        wait_until(
            lambda pid=pid: (
                not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            ),
            5,
            f"worker {pid} to exit after its task",
        )
    out = run.stdout()
    for pid in pids.values():
        assert f"task done {pid}" in out, out
        # Exactly the running task was finished; no new one was started.
        assert out.count(f"task start {pid}") == out.count(f"task done {pid}")
    assert run.count(r"master pid=\d+ is gone") == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_stop_everything_promptly(start, app_file, sig):
    app = app_file(slow_task_app())
    run = start("--app", str(app), "--workers", "3")
    pids = run.wait_ready(3)
    started = time.monotonic()
    run.signal(sig)
    assert run.wait_exit(5) == 0
    assert time.monotonic() - started < 2.0
    for pid in pids.values():
        assert not psutil.pid_exists(pid)
    assert "master exited" in run.log()


def test_quit_lets_the_running_task_finish(start, app_file):
    app = app_file(slow_task_app())
    run = start("--app", str(app), "--workers", "2")
    pids = run.wait_workers(2)
    wait_until(lambda: run.stdout().count("task start") >= 2, 5, "tasks to start")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    out = run.stdout()
    for pid in pids.values():
        assert out.count(f"task start {pid}") == out.count(f"task done {pid}"), out
    log = run.log()
    assert log.count("exited") >= 2
    assert "master exited" in log


def test_exception_in_worker_start_is_logged_and_worker_replaced(start, app_file, tmp_path):
    flag = tmp_path / "raised"
    app = app_file(f"""
        import os, time
        def worker_start(worker):
            if not os.path.exists({str(flag)!r}):
                open({str(flag)!r}, "w").close()
                raise ValueError("boom in task")
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "1")
    log = run.wait_log(r"worker\[0\] ready", 2)
    log = run.wait_log(r"status=exit 1")
    assert "Traceback (most recent call last)" in log
    assert "ValueError: boom in task" in log
    run.wait_workers(1)


def test_crash_loop_backs_off_and_term_still_works(start, app_file):
    app = app_file("""
        def worker_start(worker):
            raise RuntimeError("always")
    """)
    run = start("--app", str(app), "--workers", "2")
    run.wait_log("crash loop")
    deadline = time.monotonic() + 3
    wait_until(lambda: time.monotonic() >= deadline, 4, "3 seconds of crash loop")
    spawned = run.count(r"spawned pid=")
    assert spawned <= 40, spawned
    assert spawned >= 4
    started = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(3) == 0
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("preload", [False, True])
def test_before_fork_runs_only_with_preload(start, app_file, tmp_path, preload):
    app = app_file("""
        import os, time
        def before_fork(worker):
            print(f"before_fork {worker.nr} in {os.getpid()}", flush=True)
        def after_fork(worker):
            print(f"after_fork {worker.nr} in {os.getpid()}", flush=True)
        def worker_start(worker):
            time.sleep(0.05)
    """)
    args = ["--app", str(app), "--workers", "2"] + (["--preload"] if preload else [])
    run = start(*args)
    pids = run.wait_ready(2)
    wait_until(lambda: run.stdout().count("after_fork") == 2, 5, "after_fork twice")
    out = run.stdout()
    for nr, pid in pids.items():
        assert f"after_fork {nr} in {pid}" in out
    if preload:
        assert out.count(f"in {run.pid}") == 2 and "before_fork 0" in out
    else:
        assert "before_fork" not in out


def test_app_as_dotted_module(start, tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text("import time\ndef worker_start(worker):\n    time.sleep(0.05)\n")
    run = start("--app", "mypkg.tasks", "--workers", "2")
    run.wait_ready(2)
    proc = psutil.Process(run.pid)
    assert "mypkg.tasks" in " ".join(proc.cmdline())


def test_worker_object_attributes(start, app_file, tmp_path):
    out = tmp_path / "attrs"
    app = app_file(f"""
        import os, logging, time
        def worker_start(worker):
            if worker.tasks == 2:
                with open({str(out)!r} + str(worker.nr), "w") as f:
                    f.write(repr((worker.nr, worker.pid == os.getpid(),
                        worker.master_pid == os.getppid(), worker.sockets, worker.alive,
                        isinstance(worker.log, logging.Logger))))
                worker.log.info("hello from the app")
                worker.notify()
            time.sleep(0.01)
    """)
    run = start("--app", str(app), "--workers", "1")
    run.wait_ready(1)
    wait_until(lambda: (tmp_path / "attrs0").exists(), 5, "attrs file")
    wait_until(lambda: "hello from the app" in run.log(), 5, "app log line")
    assert (tmp_path / "attrs0").read_text() == "(0, True, True, [], True, True)"


def test_demo_app_prints_like_the_original(start):
    run = start("--app", str(EXAMPLES / "testapp.py"), "--workers", "2")
    pids = run.wait_ready(2)
    wait_until(lambda: run.stdout().count("Performing a task") >= 2, 5, "demo output")
    out = run.stdout()
    for nr, pid in pids.items():
        assert f"worker[{nr}] pid={pid} do this after forking" in out
        assert f"worker[{nr}] pid={pid} Performing a task: sleeping for " in out


def names(procs: list[psutil.Process]) -> list[str]:
    """Their names, leaving out any that exited meanwhile (the master's start runs
    short-lived helpers: ctypes looks for libc with ldconfig)."""
    found = []
    for proc in procs:
        try:
            found.append(proc.name())
        except psutil.NoSuchProcess:
            continue
    return found


def test_entry_points_are_the_master_itself(tmp_path, app_file):
    """`python -m unicornish` and bin/unicornish: the started pid is the master."""
    app = app_file(loop_app())
    from helpers import BIN, ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for cmd in (
        [str(BIN)],
        [os.path.join(str(ROOT), ".venv", "bin", "python"), "-m", "unicornish"],
    ):
        proc = subprocess.Popen(
            [*cmd, "--app", str(app), "--workers", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda proc=proc: "worker[0]" in names(psutil.Process(proc.pid).children()),
                10,
                "a worker under the started pid",
            )
            assert psutil.Process(proc.pid).name() == "unicornish"
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)


# -- a dead master that its parent does not reap -----------------------------------------


NEVER_REAPS = """
import os, sys, time
# Starts the master as its child, then never waits for it: a SIGKILLed master
# stays a zombie, with its pid and create time, for as long as we sleep.
if os.fork() == 0:
    os.execv(sys.argv[1], sys.argv[1:])
while True:
    time.sleep(3600)
"""


DEAF_TO_QUIT = """
import signal, time
def after_fork(worker):
    # The parent-death signal (SIGQUIT) goes unseen: only the worker's own check
    # of its master after each task can end it.
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_worker_leaves_a_zombie_master(start, tmp_path: Path) -> None:
    launcher = tmp_path / "never_reaps.py"
    launcher.write_text(NEVER_REAPS)
    app = tmp_path / "app.py"
    app.write_text(DEAF_TO_QUIT)
    run = start("--app", str(app), prefix=[sys.executable, str(launcher)])
    run.wait_log(r"worker\[0\] ready")
    master = wait_until(lambda: psutil.Process(run.pid).children(), 10, "the master")[0].pid
    (worker,) = wait_until(lambda: psutil.Process(master).children(), 10, "the worker")
    run.seen.add(worker.pid)  # cleaned up by pid even if it outlives this test
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: gone(master), 5, "the master to die")
    assert psutil.Process(master).status() == psutil.STATUS_ZOMBIE  # never reaped
    wait_until(lambda: gone(worker.pid), 5, f"worker {worker.pid} to leave its dead master")
    assert f"worker[0] master pid={master} is gone" in run.log()


# -- each worker maps only its own scoreboard page ---------------------------------------


MAPS_APP = """
import time
def after_fork(worker):
    with open("/proc/self/maps") as maps:
        shared = [line for line in maps if "/dev/zero" in line or "SYSV" in line]
    print(f"worker[{worker.nr}] pid={worker.pid} shared mappings: {len(shared)}", flush=True)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_a_worker_maps_only_its_own_scoreboard_page(start, app_file):
    """Not its siblings' pages: it could write their heartbeats."""
    run = start("--app", str(app_file(MAPS_APP)), "--workers", "4", "--spares", "1")
    pids = run.wait_ready(4)
    os.kill(pids[2], signal.SIGKILL)  # the spare takes slot 2
    run.wait_log(r"a spare takes the slot")
    wait_until(lambda: run.stdout().count("shared mappings") >= 5, 10, "five reports")
    counts = [int(n) for n in re.findall(r"shared mappings: (\d+)", run.stdout())]
    # Its own two pages: its scoreboard and its app-metrics arena; none of the
    # four others' (with them, 2 x 5 = 10).
    assert counts and set(counts) == {2}, run.stdout()
