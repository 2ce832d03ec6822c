"""Regression tests for defects 5-16 of the defects list, each with real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, run_cli, wait_until

APP = """
import time
def worker_start(worker):
    time.sleep(0.05)
"""


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The bad-input contract: exit code, one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unicornish: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


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


# -- 5: an unwritable pid file stops the start ------------------------------------


def _unwritable_pid_path() -> str:
    """A directory root may "write" by os.access() but cannot create files in."""
    for directory in ("/sys", "/proc"):
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            return f"{directory}/app.pid"
    pytest.skip("no sysfs or procfs to try")


@pytest.mark.parametrize("daemonize", [False, True])
def test_unwritable_pid_file_stops_the_start(tmp_path: Path, daemonize: bool) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
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


# -- 9: a pid file naming a live process that is no master ----------------------


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
    app.write_text(APP)
    pid_path = tmp_path / "app.pid"
    pid_path.write_text(f"{pid}\n")
    run = start("--app", str(app), "--pid", str(pid_path))
    wait_until(lambda: pid_path.read_text() == f"{run.pid}\n", 10, "the pid file replaced")
    log = run.log()
    assert f"replacing stale pid file {pid_path} (pid={pid} is not a unicornish master)" in log
    assert "is not running" not in log
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # left alone


# -- 8: a unix socket mode that is not octal 0..0777 -----------------------------


@pytest.mark.parametrize("mode", ["999", "0o660", "1777", "", "0660x"])
def test_bad_unix_socket_mode_is_refused(tmp_path: Path, mode: str) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    sock = tmp_path / "x.sock"
    result = run_cli("--app", str(app), "--listen", f"unix:{sock}:{mode}", cwd=tmp_path)
    one_error_line(result, 2, "--listen", "mode must be octal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]  # no x.sock:999


def test_unix_socket_paths_with_a_colon(start, tmp_path: Path) -> None:
    """A ':' followed by a directory stays in the path; a path whose last ':' is
    followed by a digit takes an explicit mode after it."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    (tmp_path / "a:b").mkdir()
    in_dir = tmp_path / "a:b" / "x.sock"
    digits = tmp_path / "app:1"
    run = start("--app", str(app), "--listen", f"unix:{in_dir}", "--listen", f"unix:{digits}:0600")
    run.wait_ready(1)
    log = run.log()
    assert f"listening on unix:{in_dir} fd=" in log and f"listening on unix:{digits} fd=" in log
    assert in_dir.is_socket() and digits.is_socket()
    assert digits.stat().st_mode & 0o777 == 0o600


# -- 16: --app names a directory ---------------------------------------------------


@pytest.mark.parametrize("name", ["somedir", "my-dir"])
@pytest.mark.parametrize("preload", [False, True])
def test_app_that_is_a_directory(tmp_path: Path, name: str, preload: bool) -> None:
    (tmp_path / name).mkdir()
    result = run_cli("--app", name, *(["--preload"] if preload else []), cwd=tmp_path)
    one_error_line(result, 1, "is a directory", name)


def test_app_that_is_a_package_directory_still_runs(start, tmp_path: Path) -> None:
    """A directory with __init__.py is a module: it runs, the message is only for
    a directory no module answers to."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text(APP)
    run = start("--app", "tasks")
    run.wait_ready(1)


# -- 11: status --help and ctl --help ------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize(
    "command, words",
    [
        ("status", ["--control PATH", "--pid FILE", "--json", "exit codes", "3  not running"]),
        ("ctl", ["COMMAND", "scale N", "reload", "stop [--quick]", "upgrade", "exit codes"]),
    ],
)
def test_subcommand_help(tmp_path: Path, command: str, words: list[str], flag: str) -> None:
    result = run_cli(command, flag, cwd=tmp_path, env={"UNICORNISH_CONTROL": ""})
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith(f"usage: unicornish {command} ")
    for word in words:
        assert word in result.stdout, (word, result.stdout)


# -- 10: a fresh clone, before set-up ---------------------------------------------------


def _python_without_deps(where: Path) -> Path:
    """A bare venv (no pip, no system site-packages): what `python3` is on a machine
    where nobody ran `make` yet, as far as psutil and setproctitle go."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python3"
    probe = subprocess.run([str(python), "-c", "import psutil"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("psutil is importable even from a bare venv here")
    return python


def test_launcher_without_dependencies_says_what_to_run(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    for part in ("bin", "unicornish"):
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    python = _python_without_deps(tmp_path / "bare")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{python.parent}:/usr/bin:/bin"  # no .venv in the clone: python3 from PATH
    for args in (["--help"], ["--app", "app.py"], ["status", "--help"]):
        result = subprocess.run(
            [str(clone / "bin" / "unicornish"), *args],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=str(tmp_path),  # not a checkout: `-m` would import from the cwd first
            env=env,
            stdin=subprocess.DEVNULL,
        )
        line = one_error_line(result, 1, "psutil", "make run", "pip install -e")
        assert str(clone) in line


# -- 6: an app file name that is not UTF-8 ----------------------------------------------


def _title(pid: int) -> str:
    # setproctitle pads the old argv area with NULs: psutil sees empty arguments.
    return " ".join(arg for arg in psutil.Process(pid).cmdline() if arg)


def test_app_file_name_that_is_not_utf8(start, tmp_path: Path) -> None:
    app = os.fsdecode(os.fsencode(tmp_path) + b"/app\xff.py")  # a surrogate escape in str
    Path(app).write_text(APP)
    control = tmp_path / "ctl.sock"
    pid_path = tmp_path / "app.pid"
    run = start("--app", app, "--control", str(control), "--pid", str(pid_path))
    workers = run.wait_ready(1)
    shown = "app\ufffd.py"
    master_title = f"unicornish master {tmp_path}/{shown}"  # the app as given
    wait_until(lambda: _title(run.pid) == master_title, 5, "the master's title")
    assert _title(workers[0]) == f"unicornish worker[0] {shown}"
    assert "Traceback" not in run.log()
    result = run_cli("status", "--control", str(control), "--json", cwd=tmp_path)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["master"]["app"] == shown
    for how in (["--control", str(control)], ["--pid", str(pid_path)]):
        result = run_cli("status", *how, cwd=tmp_path)
        assert result.returncode == 0 and f"app={shown} " in result.stdout, result


@pytest.mark.parametrize("preload", [False, True])
def test_broken_app_whose_name_is_not_utf8(tmp_path: Path, preload: bool) -> None:
    app = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.py")
    Path(app).write_text("def worker_start(worker)\n")
    result = run_cli("--app", app, *(["--preload"] if preload else []), cwd=tmp_path)
    one_error_line(result, 1, "SyntaxError", "bad\ufffd.py")


# -- 7: a dead master that its parent does not reap ---------------------------------------

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


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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
    wait_until(lambda: _gone(master), 5, "the master to die")
    assert psutil.Process(master).status() == psutil.STATUS_ZOMBIE  # never reaped
    wait_until(lambda: _gone(worker.pid), 5, f"worker {worker.pid} to leave its dead master")
    assert f"worker[0] master pid={master} is gone" in run.log()
