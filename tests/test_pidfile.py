"""--pid FILE: atomic, never through a symlink, never someone else's, refused beside a
live master, replaced when stale."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import fill, loop_app, one_error_line, run_cli, wait_until


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM])
def test_written_when_ready_and_removed_on_exit(start, app_file, tmp_path, sig):
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    run = start("--app", str(app), "--pid", str(pid_path))
    run.wait_log("master process ready")
    wait_until(lambda: read(pid_path) == f"{run.pid}\n", 5, "the pid file")
    assert pid_path.stat().st_mode & 0o777 == 0o644
    # Nothing left behind beside it (the temporary file was renamed).
    assert sorted(p.name for p in tmp_path.iterdir() if "pid" in p.name) == ["app.pid"]
    run.wait_ready(1)
    run.signal(sig)
    assert run.wait_exit(10) == 0
    assert not pid_path.exists()


def test_not_removed_on_exit_when_it_names_another_process(start, app_file, tmp_path):
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: read(pid_path) == f"{run.pid}\n", 5, "the pid file")
    pid_path.write_text("4242\n")  # someone else's now (a newer master, say)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert read(pid_path) == "4242\n"


def test_a_symlink_is_replaced_never_followed(start, app_file, tmp_path):
    app = app_file(loop_app())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    pid_path = tmp_path / "app.pid"
    pid_path.symlink_to(victim)
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: not pid_path.is_symlink() and read(pid_path), 5, "a real pid file")
    assert read(pid_path) == f"{run.pid}\n"
    assert victim.read_text() == "precious\n"
    assert "replacing stale pid file" in run.log()


def test_refuses_to_start_beside_a_live_master_and_leaves_it_alone(start, app_file, tmp_path):
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    first = start("--app", str(app), "--pid", str(pid_path), "--workers", "2")
    pids = first.wait_ready(2)
    wait_until(lambda: read(pid_path) == f"{first.pid}\n", 5, "the pid file")
    before = pid_path.stat()
    second_log = tmp_path / "second.log"
    result = subprocess.run(
        [
            str(first.cmd[0]),
            "--app",
            str(app),
            "--pid",
            str(pid_path),
            "--log-file",
            str(second_log),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        cwd=str(tmp_path),
        start_new_session=True,
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already running" in lines[0] and str(first.pid) in lines[0]
    assert "Traceback" not in result.stderr
    # The first master, its workers and its file are untouched.
    after = pid_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert read(pid_path) == f"{first.pid}\n"
    assert first.proc.poll() is None and first.worker_pids() == pids
    first.signal(signal.SIGQUIT)
    assert first.wait_exit(10) == 0
    assert not pid_path.exists()


def test_stale_file_with_a_dead_pid_is_replaced(start, app_file, tmp_path):
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    dead = dead_pid()
    pid_path.write_text(f"{dead}\n")
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: read(pid_path) == f"{run.pid}\n", 5, "the pid file")
    log = run.log()
    assert f"replacing stale pid file {pid_path} (pid={dead} is not running)" in log


@pytest.mark.parametrize("content", ["", "garbage\n", "-5\n"])
def test_stale_file_with_garbage_is_replaced(start, app_file, tmp_path, content):
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    pid_path.write_text(content)
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: read(pid_path) == f"{run.pid}\n", 5, "the pid file")
    assert "replacing stale pid file" in run.log()


def test_stale_file_naming_another_program_is_replaced(start, app_file, tmp_path):
    """The pid was reused by another program, even one whose command line mentions
    unicornish (an admin tailing its log): not a master, so the file is stale."""
    app = app_file(loop_app())
    pid_path = tmp_path / "app.pid"
    log_path = tmp_path / "unicornish.host.log"
    log_path.touch()
    other = subprocess.Popen(
        ["tail", "-f", str(log_path)], stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        pid_path.write_text(f"{other.pid}\n")
        run = start("--app", str(app), "--pid", str(pid_path))
        wait_until(
            lambda: read(pid_path) == f"{run.pid}\n",
            5,
            f"the pid file to be replaced; stderr: {run.log()[-2000:]}",
        )
        assert "replacing stale pid file" in run.log()
        assert psutil.Process(other.pid).status() != psutil.STATUS_ZOMBIE  # left alone
    finally:
        other.kill()
        other.wait(5)


@pytest.mark.parametrize(
    "name, args, expected",
    [
        ("unicornish", ["unicornish master app.py"], True),
        ("python3", ["/venv/bin/python3", "-m", "unicornish", "--app", "a.py"], True),
        ("python3", ["/usr/bin/python3.11", "/usr/local/bin/unicornish", "--app", "a"], True),
        ("tail", ["tail", "-f", "/var/log/unicornish.host.log"], False),
        ("less", ["less", "unicornish"], False),
        ("python3", ["python3", "/srv/unicornish/tool.py"], False),
        ("vim", ["vim", "/etc/unicornish/conf.py"], False),
    ],
)
def test_what_counts_as_a_live_master(name, args, expected):
    from unicornish.host.pidfile import looks_like_master

    assert looks_like_master(name, args) is expected


# -- a pid file that cannot be written, or names another program -------------------------


def kill_logged(log_path: Path) -> None:
    """SIGKILL the master and workers a log names, if they still run: without a fix
    a -D master runs on in a session of its own, out of reach of any Popen."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return
    masters = {int(p) for p in re.findall(r"master process ready pid=(\d+)", text)}
    workers = {int(p) for p in re.findall(r"spawned pid=(\d+)", text)}
    for pid in sorted(masters) + sorted(workers):
        try:
            # Only a unicornish process (the pid may be reused by now).
            name = psutil.Process(pid).name()
            if name == "unicornish" or name.startswith("worker["):
                os.kill(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            continue


def _unwritable_pid_path() -> str:
    """A directory root may "write" by os.access() but cannot create files in."""
    for directory in ("/sys", "/proc"):
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            return f"{directory}/app.pid"
    pytest.skip("no sysfs or procfs to try")


@pytest.mark.parametrize("daemonize", [False, True])
def test_unwritable_pid_file_stops_the_start(tmp_path: Path, daemonize: bool) -> None:
    app = tmp_path / "app.py"
    app.write_text(loop_app())
    pid_path = _unwritable_pid_path()
    log_path = tmp_path / "unicornish.host.log"
    args = ["--app", str(app), "--pid", pid_path, "--log-file", str(log_path)]
    try:
        result = run_cli(*args, *(["-D"] if daemonize else []), cwd=tmp_path, timeout=20)
        one_error_line(result, 1, "cannot write pid file", pid_path)
        # Refused before any worker (and before the log file was opened).
        assert not log_path.exists() or "spawned" not in log_path.read_text()
    finally:
        kill_logged(log_path)


@pytest.fixture
def other_process() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("whose", ["pid 1", "a sleep"])
def test_pid_file_naming_a_live_non_master(start, tmp_path, other_process, whose) -> None:
    pid = 1 if whose == "pid 1" else other_process
    if pid == 1 and psutil.Process(1).name() == "unicornish":
        pytest.skip("pid 1 is a unicornish master here")
    app = tmp_path / "app.py"
    app.write_text(loop_app())
    pid_path = tmp_path / "app.pid"
    pid_path.write_text(f"{pid}\n")
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: pid_path.read_text() == f"{run.pid}\n", 10, "the pid file replaced")
    log = run.log()
    assert f"replacing stale pid file {pid_path} (pid={pid} is not a unicornish master)" in log
    assert "is not running" not in log
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # left alone


def test_a_full_disk_leaves_no_temporary_file(small_fs, start, app_file):
    """The pid file's directory is a real filesystem with no space left: the
    master logs that it cannot write it, runs on, and leaves nothing behind
    (the temporary file is created, then its write fails)."""
    app = app_file(loop_app())
    pid_path = small_fs / "app.pid"
    fill(small_fs)
    run = start("--app", str(app), "--pid", str(pid_path))
    run.wait_log(f"cannot write pid file {pid_path}: No space left on device", 1, 10)
    run.wait_ready(1)
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
