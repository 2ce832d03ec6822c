"""The control socket (issue 5): real masters, real sockets, real `unicornish ctl`."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
import weakref
from pathlib import Path

import psutil
import pytest
from helpers import ctl, loop_app, run_cli, slow_task_app, wait_until
from other_user import SYSTEM_PYTHON, open_dir, run_as, temp_user


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


_pending: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_line(sock: socket.socket) -> dict:
    """One reply line; what a recv() brought beyond it waits for the next call."""
    data = _pending.pop(sock, b"")
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    _pending[sock] = rest
    return json.loads(line)


def test_socket_is_0600_and_every_command_works(start, app_file, tmp_path):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "2", "--control", str(path))
    run.wait_ready(2)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600

    code, reply = ctl(path, "status")
    assert code == 0 and reply["ok"] is True
    assert reply["master"]["pid"] == run.pid
    assert reply["master"]["workers_wanted"] == 2

    # scale N is exact, unlike signals (which coalesce).
    code, reply = ctl(path, "scale", "7")
    assert (code, reply) == (0, {"ok": True, "workers_wanted": 7})
    run.wait_ready(7, timeout=20)
    wait_until(lambda: run.count(r"worker\[\d\] ready") >= 7, 10, "7 ready")
    assert len(run.workers()) == 7
    assert run.count("control scale 7: 7 workers wanted") == 1

    assert ctl(path, "ttou") == (0, {"ok": True, "workers_wanted": 6})
    run.wait_workers(6)
    assert ctl(path, "ttin") == (0, {"ok": True, "workers_wanted": 7})
    run.wait_workers(7)
    assert ctl(path, "scale", "1") == (0, {"ok": True, "workers_wanted": 1})
    pids = run.wait_workers(1)

    # reopen = USR1: a rotated log file is recreated.
    rotated = tmp_path / "unicornish.host.log.1"
    os.rename(run.log_path, rotated)
    assert ctl(path, "reopen") == (0, {"ok": True})
    wait_until(lambda: run.log_path.exists(), 5, "a new log file")
    run.wait_log("reopened log files")

    # reload = HUP: config and app again, new workers replace the old ones.
    code, reply = ctl(path, "reload")
    assert code == 0 and reply["ok"] is True
    run.wait_log("control reload received: reloading config and app")
    run.wait_log("reload done")
    wait_until(lambda: set(run.worker_pids().values()).isdisjoint(pids.values()), 10, "new pids")

    # A request the master refuses: ctl prints the error and exits 1.
    app.write_text("def worker_start(worker):\n    syntax error here\n")
    code, reply = ctl(path, "reload")
    assert code == 1 and reply["ok"] is False and "SyntaxError" in reply["error"]

    # stop: the reply comes before the master exits; the socket file goes with it.
    code, reply = ctl(path, "stop")
    assert (code, reply) == (0, {"ok": True, "stopping": "graceful"})
    assert run.wait_exit(10) == 0
    assert not path.exists()
    assert ctl(path, "status")[0] == 3


def test_stop_quick_does_not_wait_for_tasks(start, app_file, tmp_path):
    app = app_file(slow_task_app(3))
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "2", "--control", str(path))
    run.wait_ready(2)
    wait_until(lambda: run.stdout().count("task start") >= 2, 5, "tasks to start")
    started = time.monotonic()
    assert ctl(path, "stop", "--quick") == (0, {"ok": True, "stopping": "quick"})
    assert run.wait_exit(5) == 0
    assert time.monotonic() - started < 2.5
    assert "task done" not in run.stdout()
    assert "control stop received: quick stop" in run.log()


def test_upgrade_moves_the_socket_aside_like_the_pid_file(start, app_file, tmp_path):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    pid_file = tmp_path / "app.pid"
    run = start("--app", str(app), "--workers", "1", "--control", str(path), "--pid", str(pid_file))
    run.wait_ready(1)
    code, reply = ctl(path, "upgrade")
    assert code == 0 and reply["ok"] is True
    new_pid = reply["new_master_pid"]
    assert new_pid != run.pid
    run.seen.add(new_pid)
    old_path = Path(str(path) + ".oldbin")
    wait_until(lambda: old_path.exists(), 5, "PATH.oldbin")

    def new_master_answers() -> bool:
        code, reply = ctl(path, "status")
        return code == 0 and reply["master"]["pid"] == new_pid

    wait_until(new_master_answers, 15, "the new master on PATH")
    assert ctl(old_path, "status")[1]["master"]["pid"] == run.pid
    # A second upgrade from the old master is refused while the new one runs.
    code, reply = ctl(old_path, "upgrade")
    assert code == 1 and "still running" in reply["error"]
    # Finish the upgrade: stop the old master through its moved socket.
    assert ctl(old_path, "stop")[0] == 0
    assert run.wait_exit(10) == 0
    assert not old_path.exists()
    assert path.exists()
    assert ctl(path, "stop")[0] == 0
    wait_until(lambda: not psutil.pid_exists(new_pid), 10, "the new master to exit")


def test_bad_clients_never_stall_the_master(start, app_file, tmp_path):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "2", "--control", str(path))
    pids = run.wait_ready(2)

    silent = connect(path)  # connects and says nothing
    partial = connect(path)
    partial.sendall(b'{"command": "sta')  # half a line, then nothing

    garbage = connect(path)
    garbage.sendall(
        b"\x00\xff\xfe garbage\n{not json\n[1, 2]\n"
        + b"[" * 60000
        + b'\n{"command": "scale", "workers": -1}\n'
        + b'{"command": "rm -rf"}\n'
        + b"scale 2 3\n"
    )
    errors = [read_line(garbage) for _ in range(7)]
    assert all(e["ok"] is False for e in errors), errors
    assert "UTF-8" in errors[0]["error"]
    assert "JSON" in errors[1]["error"] and "JSON" in errors[3]["error"]
    assert "object" in errors[2]["error"]
    assert "scale" in errors[4]["error"]
    assert "unknown command" in errors[5]["error"]
    # The same connection still works for a good request afterwards.
    garbage.sendall(b"status\n")
    assert read_line(garbage)["master"]["pid"] == run.pid

    outcome: dict[str, object] = {}
    big = connect(path)
    big.settimeout(10)

    def blast() -> None:
        try:
            big.sendall(b"x" * (10 * 1024 * 1024))
            outcome["sent"] = True
        except OSError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=blast, daemon=True)
    sender.start()

    # Meanwhile a killed worker is replaced at once.
    os.kill(pids[1], signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: run.worker_pids().get(1) not in (None, pids[1]), 1.5, "worker[1] replaced")
    assert time.monotonic() - started < 1.5

    sender.join(10)
    assert not sender.is_alive()
    # The master read no more than about 64 KiB of it, answered, and hung up.
    assert "error" in outcome, outcome

    code, reply = ctl(path, "status")
    assert code == 0 and reply["master"]["workers_running"] == 2

    # A silent client is dropped after a few seconds; the half line too.
    for sock in (silent, partial):
        sock.settimeout(10)
        assert sock.recv(100) == b""
    run.wait_log(r"control: dropped a client \(pid=\d+\) silent for 5s", 2)
    for sock in (silent, partial, garbage, big):
        sock.close()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_second_master_on_the_same_socket_refuses_and_stale_one_is_replaced(
    start, app_file, tmp_path
):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "0", "--control", str(path))
    run.wait_log("master process ready")
    result = run_cli("--app", str(app), "--workers", "0", "--control", str(path))
    assert result.returncode == 1
    assert "already running" in result.stderr and str(path) in result.stderr
    # SIGKILL leaves the socket file behind: a new master replaces it.
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    assert path.exists()
    assert ctl(path, "status")[0] == 3
    again = start("--app", str(app), "--workers", "0", "--control", str(path), log_file=False)
    wait_until(lambda: ctl(path, "status")[0] == 0, 10, "the new master to answer")
    again.signal(signal.SIGTERM)
    assert again.wait_exit(5) == 0
    # Not a socket: refused, and never removed.
    path.write_text("precious")
    result = run_cli("--app", str(app), "--control", str(path))
    assert result.returncode == 1 and "not a socket" in result.stderr
    assert path.read_text() == "precious"


def test_ctl_usage_and_no_master(tmp_path):
    missing = tmp_path / "nothing.sock"
    result = run_cli("ctl", "--control", str(missing), "status")
    assert result.returncode == 3 and "not running" in result.stderr
    for args in (["scale"], ["scale", "x"], ["bogus"], ["stop", "--now"], ["ttin", "2"], []):
        result = run_cli("ctl", "--control", str(missing), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("unicornish: error: ")
        assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("ctl", "status", env={"UNICORNISH_CONTROL": ""})
    assert result.returncode == 2 and "--control" in result.stderr


CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
try:
    s.sendall(b'{"command": "stop"}\\n')
except (BrokenPipeError, ConnectionResetError):
    pass  # refused before it read the request: the reply still waits to be read
data = s.recv(65536)
print(data.decode().strip() or "EOF")
"""


def test_another_uid_is_refused_even_when_the_file_mode_would_let_it_in(start, app_file):
    with temp_user() as user, open_dir() as shared:
        app = app_file(loop_app())
        path = shared / "ctl.sock"
        run = start("--app", str(app), "--workers", "1", "--control", str(path))
        run.wait_ready(1)
        # Mode 0600: the other user cannot even connect.
        result = run_as(user, SYSTEM_PYTHON, "-c", CLIENT, str(path))
        assert result.stdout.strip() == "EACCES", result
        # Loosen the mode by hand (a mistake): SO_PEERCRED still says no.
        os.chmod(path, 0o666)
        result = run_as(user, SYSTEM_PYTHON, "-c", CLIENT, str(path))
        assert json.loads(result.stdout) == {"ok": False, "error": "permission denied"}, result
        run.wait_log(rf"control: refused a connection from pid=\d+ uid={user.uid} gid={user.gid}")
        # The stop it asked for did not happen.
        assert psutil.pid_exists(run.pid) and len(run.workers()) == 1
        assert ctl(path, "status")[0] == 0  # root may
        run.signal(signal.SIGTERM)
        assert run.wait_exit(5) == 0


def test_new_options_from_a_config_file(start, app_file, tmp_path):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    config = tmp_path / "conf.py"
    config.write_text(
        f"app = {str(app)!r}\nworkers = 2\ncontrol = {str(path)!r}\nterm = 'graceful'\n"
        "subreaper = True\nmax_tasks = 100000\nmax_memory = 512\ngive_up_after = 60\n"
    )
    run = start("-c", str(config))
    run.wait_ready(2)
    log = run.log()
    assert "TERM means graceful stop (--term graceful)" in log
    assert "child subreaper" in log
    assert "unknown setting" not in log
    code, reply = ctl(path, "status")
    assert code == 0 and reply["master"]["workers_wanted"] == 2
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert "TERM received: graceful stop" in run.log()
    # Bad values in the file: one line, exit 1, before anything starts.
    for line, word in (
        ("term = 'later'", "term"),
        ("max_memory = -5", "max_memory"),
        ("user = 'a:b:c'", "user"),
        ("max_tasks = 'many'", "max_tasks"),
    ):
        config.write_text(f"app = {str(app)!r}\n{line}\n")
        result = run_cli("-c", str(config))
        assert result.returncode == 1, (line, result.stderr)
        assert result.stderr.startswith("unicornish: error: config file") and word in result.stderr


def test_failed_upgrade_gives_the_socket_back(start, app_file, tmp_path):
    app = app_file(loop_app())
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "1", "--control", str(path))
    run.wait_ready(1)
    app.write_text("def worker_start(worker)\n    pass\n")  # the new master cannot start
    code, reply = ctl(path, "upgrade")
    assert code == 0 and reply["ok"] is True
    run.wait_log(r"new master pid=\d+ exited \(exit 1\); this master carries on")
    wait_until(lambda: path.exists() and not Path(str(path) + ".oldbin").exists(), 5, "PATH back")
    code, reply = ctl(path, "status")
    assert code == 0 and reply["master"]["pid"] == run.pid
    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0
    assert not path.exists()


def test_hundreds_of_status_calls_at_once_wait_their_turn(start, app_file, tmp_path):
    """500 `status` calls at once: a backlog of 16 refused most of them (EAGAIN
    on connect, exit 3). They wait their turn, briefly, and all get the status."""
    from unicornish.ctl.client import NoAnswer, request

    path = tmp_path / "ctl.sock"
    run = start("--app", str(app_file(loop_app())), "--workers", "1", "--control", str(path))
    run.wait_ready(1)
    go = threading.Barrier(500)
    outcomes: list[object] = []

    def one() -> None:
        go.wait()
        try:
            reply = request(str(path), {"command": "status"})
        except NoAnswer as exc:
            outcomes.append(f"{exc} (exit {exc.code})")
            return
        outcomes.append(reply.get("ok"))

    threads = [threading.Thread(target=one) for _ in range(500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    failures = [o for o in outcomes if o is not True]
    assert len(outcomes) == 500 and not failures, (len(failures), failures[:3])
    assert ctl(path, "status")[0] == 0


def test_with_every_slot_held_by_silent_clients_ctl_is_answered_at_once(start, app_file, tmp_path):
    """64 connections open and silent: the next `ctl` takes the slot of the one
    silent longest (it used to be refused: `too many control connections`)."""
    path = tmp_path / "ctl.sock"
    run = start("--app", str(app_file(loop_app())), "--workers", "1", "--control", str(path))
    run.wait_ready(1)
    held = [connect(path) for _ in range(64)]
    try:
        held[1].sendall(b"status\n")
        assert read_line(held[1])["ok"] is True  # all 64 are accepted
        for _ in range(3):
            began = time.monotonic()
            code, reply = ctl(path, "status")
            assert code == 0 and reply["ok"] is True
            assert time.monotonic() - began < 5
        run.wait_log("control: 64 connections open; closing the one that waited longest", 1, 5)
        assert held[0].recv(100) == b""  # the first one, silent since it connected
        held[1].sendall(b"status\n")  # the others are served as before
        assert read_line(held[1])["ok"] is True
    finally:
        for sock in held:
            sock.close()


# -- status --help and ctl --help --------------------------------------------------------


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
