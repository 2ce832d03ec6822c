"""-D/--daemonize (issue 5): the launching command says truthfully whether the start worked."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import gone, run_cli, wait_until

LOOP_APP = """
import time
def worker_start(worker):
    print("task", flush=True)
    time.sleep(0.1)
"""


def unicornish_pids_using(path: Path) -> list[int]:
    """Processes whose command line names this test's directory (our masters and workers)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if proc.info["cwd"] == str(path) and proc.pid != os.getpid():
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    """Daemons leave our session: kill whatever still runs from this directory."""
    yield tmp_path
    for pid in unicornish_pids_using(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_daemonize_returns_once_ready_and_upgrades_in_place(daemon_dir):
    tmp = daemon_dir
    (tmp / "app.py").write_text(LOOP_APP)
    log, pid_file, control = tmp / "u.log", tmp / "u.pid", tmp / "ctl.sock"
    result = run_cli(
        "--app", "app.py", "--workers", "2", "-D", "--log-file", str(log),
        "--pid", str(pid_file), "--control", str(control), cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    # Ready means ready: the pid file is there and both workers said so, already.
    master_pid = int(pid_file.read_text())
    text = log.read_text()
    assert f"master process ready pid={master_pid}" in text
    assert len(re.findall(r"worker\[\d\] ready", text)) == 2
    master = psutil.Process(master_pid)
    assert master.name() == "unicornish"
    # Detached: its own session, not a session leader, stdin on /dev/null and
    # stdout/stderr on the log file (the app's prints land there too).
    assert os.getsid(master_pid) != os.getsid(0)
    assert os.getsid(master_pid) != master_pid
    assert os.readlink(f"/proc/{master_pid}/fd/0") == "/dev/null"
    for fd in (1, 2):
        assert os.readlink(f"/proc/{master_pid}/fd/{fd}") == str(log)
    wait_until(lambda: "task" in log.read_text().replace("[", ""), 5, "app output in the log")

    # USR2 of a -D master: the new master does not daemonize again (the old
    # one watches its pid, which must stay the master's).
    reply = json.loads(run_cli("ctl", "--control", str(control), "upgrade").stdout)
    new_pid = reply["new_master_pid"]
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() == str(new_pid), 15,
               "the new master's pid file")  # fmt: skip
    new = psutil.Process(new_pid)
    assert new.ppid() == master_pid and new.name() == "unicornish"
    assert f"new master pid={new_pid} exited" not in log.read_text()  # it did not exit
    os.kill(master_pid, signal.SIGQUIT)
    wait_until(lambda: gone(master_pid), 10, "the old master to exit")
    os.kill(new_pid, signal.SIGTERM)
    wait_until(lambda: gone(new_pid), 10, "the new master to exit")


@pytest.mark.parametrize(
    "case, words",
    [
        ("syntax", ["cannot load app", "SyntaxError"]),
        ("boot", ["worker[0] could not boot (exit 3)"]),
        ("running", ["already running"]),
    ],
)
def test_daemonize_failure_exits_1_with_the_reason(daemon_dir, case, words):
    tmp = daemon_dir
    app = tmp / "app.py"
    log, pid_file = tmp / "u.log", tmp / "u.pid"
    if case == "syntax":
        app.write_text("def worker_start(worker)\n    pass\n")
    elif case == "boot":
        app.write_text(
            "def after_fork(worker):\n    raise RuntimeError('no database')\n"
            "def worker_start(worker):\n    pass\n"
        )
    else:
        app.write_text(LOOP_APP)
        first = run_cli("--app", "app.py", "-D", "--log-file", str(log), "--pid", str(pid_file),
                        cwd=tmp)  # fmt: skip
        assert first.returncode == 0, first.stderr
    result = run_cli("--app", "app.py", "-D", "--log-file", str(log), "--pid", str(pid_file),
                     cwd=tmp)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unicornish: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    if case == "running":
        return
    # A failed start leaves nothing behind: the launcher returned after the master was gone.
    assert not pid_file.exists()
    # (The pipe closes as the master exits: allow it the last instant of its exit.)
    wait_until(lambda: unicornish_pids_using(tmp) == [], 2, "no process left")
    # The log has the reason too.
    if case == "boot":
        assert "-D: the start failed: worker[0] could not boot (exit 3)" in log.read_text()
        assert "master exited" in log.read_text()
    else:
        assert lines[0] in log.read_text()
