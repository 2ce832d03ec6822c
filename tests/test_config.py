"""-c/--config FILE: options and hooks from a Python file; the command line wins; HUP
re-reads it; a broken file is an error at start and a logged no-op on HUP."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import let_pass, run_cli, wait_until, write_app

# Each line is one write(2): two workers' print()s interleave their text and
# their newline when Python's stdout is unbuffered (PYTHONUNBUFFERED).
APP = """
import os, time
def say(line):
    os.write(1, (line + "\\n").encode())
def after_fork(worker):
    say(f"app after_fork {worker.nr} {os.getpid()}")
def worker_exit(worker):
    say(f"app worker_exit {worker.nr} {os.getpid()}")
def before_fork(worker):
    say(f"app before_fork {worker.nr} {os.getpid()}")
def worker_start(worker):
    time.sleep(0.05)
"""

HOOKS = """
import os
def say(line):
    os.write(1, (line + "\\n").encode())
def after_fork(worker):
    say(f"config after_fork {worker.nr} {os.getpid()}")
def worker_exit(worker):
    say(f"config worker_exit {worker.nr} {os.getpid()}")
def before_fork(worker):
    say(f"config before_fork {worker.nr} {os.getpid()}")
"""


def write_config(tmp: Path, text: str) -> Path:
    return write_app(tmp, text, "conf.py")


def test_options_come_from_the_file(start, app_file, tmp_path):
    app_file(APP)
    pid_path = tmp_path / "from-config.pid"
    conf = write_config(
        tmp_path,
        f"""
        app = "app.py"
        workers = 3
        graceful_timeout = 0.5
        timeout = 5
        pid = {str(pid_path)!r}
        _helper = 42          # private names are the file's own business
        """,
    )
    run = start("-c", str(conf))
    pids = run.wait_ready(3)
    assert sorted(pids) == [0, 1, 2]
    wait_until(lambda: pid_path.exists() and pid_path.read_text() == f"{run.pid}\n", 5)
    assert "unknown setting" not in run.log()
    # graceful_timeout = 0.5 from the file: a worker ignoring QUIT is killed fast.
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)  # cannot act on QUIT while stopped
    started = time.monotonic()
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert time.monotonic() - started < 4
    assert run.count("did not stop after SIGQUIT") == 3


def test_command_line_wins_over_the_file(start, app_file, tmp_path):
    app = app_file(APP)
    conf = write_config(tmp_path, 'app = "missing.py"\nworkers = 3\n')
    run = start("-c", str(conf), "--app", str(app), "--workers", "1")
    run.wait_ready(1)
    let_pass(0.3)
    assert list(run.worker_pids()) == [0]


def test_hooks_from_the_file_run_before_the_apps(start, app_file, tmp_path):
    app = app_file(APP)
    conf = write_config(tmp_path, HOOKS)
    run = start("-c", str(conf), "--app", str(app), "--workers", "2", "--preload")
    pids = run.wait_ready(2)
    wait_until(lambda: run.stdout().count("after_fork") == 4, 5, "after_fork hooks")
    out = run.stdout().splitlines()
    for nr, pid in pids.items():
        # In the worker: config's after_fork, then the app's.
        assert out.index(f"config after_fork {nr} {pid}") < out.index(f"app after_fork {nr} {pid}")
        # In the master (with --preload): config's before_fork, then the app's.
        assert out.index(f"config before_fork {nr} {run.pid}") < out.index(
            f"app before_fork {nr} {run.pid}"
        )
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    out = run.stdout().splitlines()
    for nr, pid in pids.items():
        assert out.index(f"config worker_exit {nr} {pid}") < out.index(
            f"app worker_exit {nr} {pid}"
        )


def test_unknown_setting_is_a_warning(start, app_file, tmp_path):
    app = app_file(APP)
    conf = write_config(tmp_path, "wokers = 3\n")
    run = start("-c", str(conf), "--app", str(app))
    run.wait_ready(1)
    assert "unknown setting 'wokers' ignored" in run.log()


@pytest.mark.parametrize(
    "text, words",
    [
        ("workers = (\n", ["SyntaxError", "conf.py"]),
        ("raise RuntimeError('no settings today')\n", ["RuntimeError", "no settings today"]),
        ("import sys\nsys.exit(3)\n", ["SystemExit"]),
        ("workers = -1\n", ["workers", ">= 0"]),
        ("workers = 'many'\n", ["workers"]),
        ("timeout = 'soon'\n", ["timeout"]),
        ("preload = 'yes'\n", ["preload", "True or False"]),
        ("after_fork = 3\n", ["after_fork", "function"]),
        ("config = 'other.py'\n", ["config"]),
        (None, ["config file not found"]),
    ],
)
def test_broken_file_at_start_exits_1_with_one_line(tmp_path, app_file, text, words):
    app = app_file(APP)
    if text is not None:
        write_config(tmp_path, text)
    result = run_cli("-c", str(tmp_path / "conf.py"), "--app", str(app), cwd=tmp_path)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unicornish: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_config_without_app_anywhere(tmp_path):
    write_config(tmp_path, "workers = 2\n")
    result = run_cli("-c", str(tmp_path / "conf.py"), cwd=tmp_path)
    assert result.returncode == 1
    assert "no app" in result.stderr and result.stderr.count("\n") == 1


def test_hup_rereads_the_file(start, app_file, tmp_path):
    app = app_file(APP)
    conf = write_config(tmp_path, "workers = 2\n")
    run = start("-c", str(conf), "--app", str(app))
    run.wait_ready(2)
    conf.write_text("workers = 3\n" + textwrap.dedent(HOOKS))
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    pids = run.wait_workers(3)
    # New workers run the new hooks from the file.
    wait_until(lambda: run.stdout().count("config after_fork") == 3, 5, "new config hooks")
    for nr, pid in pids.items():
        assert f"config after_fork {nr} {pid}" in run.stdout()


@pytest.mark.parametrize(
    "broken", ["workers = (\n", "workers = 'lots'\n", "raise ValueError('half-written')\n"]
)
def test_broken_file_on_hup_keeps_old_settings_and_workers(start, app_file, tmp_path, broken):
    app = app_file(APP)
    conf = write_config(tmp_path, "workers = 2\n")
    run = start("-c", str(conf), "--app", str(app))
    old = run.wait_ready(2)
    conf.write_text(broken)
    run.signal(signal.SIGHUP)
    log = run.wait_log("reload failed")
    line = next(x for x in log.splitlines() if "reload failed" in x)
    assert "conf.py" in line and "old settings and workers kept" in line
    let_pass(0.3)
    assert run.worker_pids() == old
    # The old settings stay: a worker that dies is replaced, by one, as before.
    os.kill(old[1], signal.SIGKILL)
    wait_until(lambda: run.worker_pids().get(1) not in (None, old[1]), 5, "a replacement")
    assert len(run.wait_workers(2)) == 2
    # Fixed file, HUP: it applies.
    conf.write_text("workers = 1\n")
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    assert list(run.wait_workers(1)) == [0]


def test_broken_app_on_hup_keeps_old_settings_from_the_file(start, app_file, tmp_path):
    """The file says 1 worker now and the app is broken: the reload fails, so the
    old two workers stay (same pids) and the old count with them."""
    app = app_file(APP)
    conf = write_config(tmp_path, "workers = 2\ngraceful_timeout = 7\n")
    run = start("-c", str(conf), "--app", str(app))
    old = run.wait_ready(2)
    conf.write_text("workers = 1\n")
    app.write_text("raise RuntimeError('no database')\ndef worker_start(worker):\n    pass\n")
    run.signal(signal.SIGHUP)
    run.wait_log("reload failed")
    run.wait_log(r"status=exit 3")
    let_pass(0.5)
    assert run.worker_pids() == old, run.log()
    assert not re.search(rf"reaped pid=({old[0]}|{old[1]}) ", run.log())


def test_hup_to_another_app_named_in_the_file(start, app_file, tmp_path):
    app_file(
        APP.replace("time.sleep(0.05)", "print('from a', flush=True); time.sleep(0.05)"), "a.py"
    )
    app_file(
        APP.replace("time.sleep(0.05)", "print('from b', flush=True); time.sleep(0.05)"), "b.py"
    )
    conf = write_config(tmp_path, 'app = "a.py"\n')
    run = start("-c", str(conf))
    run.wait_ready(1)
    conf.write_text('app = "b.py"\n')
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    pids = run.wait_workers(1)
    wait_until(lambda: "from b" in run.stdout(), 5, "the new app's tasks")
    # Titles name the app now running.
    assert " ".join(psutil.Process(pids[0]).cmdline()).startswith("unicornish worker[0] b.py")
    assert " ".join(psutil.Process(run.pid).cmdline()).startswith("unicornish master b.py")


def test_failed_hup_to_another_user_keeps_the_old_user(start, app_file, tmp_path):
    """HUP with `user = "nobody"` whose workers cannot boot (they cannot read the
    app under root's 0700 tmp dir): the reload fails, and later replacements run
    as before, not as the user of the failed reload."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to run workers as another user")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    app = app_file(APP)
    conf = write_config(tmp_path, "workers = 2\n")
    run = start("-c", str(conf), "--app", str(app))
    old = run.wait_ready(2)
    conf.write_text('workers = 2\nuser = "nobody"\n')
    run.signal(signal.SIGHUP)
    run.wait_log("reload failed")
    assert run.worker_pids() == old
    os.kill(old[1], signal.SIGKILL)
    wait_until(lambda: run.worker_pids().get(1) not in (None, old[1]), 5, "a replacement")
    run.wait_log(r"worker\[1\] ready", 2)
    new = run.worker_pids()[1]
    assert psutil.Process(new).uids().real == 0
