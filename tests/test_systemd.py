"""systemd (issue 4): the notify protocol on a real unix datagram socket, the
hand-over to a new master, socket activation through a launcher, the units."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import (
    BIN,
    BROKEN_APP,
    ROOT,
    NotifyListener,
    alive,
    gone,
    new_master,
    read_pid,
    slow_task_app,
    stop_master,
    wait_until,
)
from http_client import Hammer, get, listen_addresses, tcp_target, write_http_app

CONTRIB = ROOT / "contrib" / "systemd"


# The launcher exports WATCHDOG_PID=<its pid> and execs bin/unicornish: that pid is
# the master's, as when systemd starts it.
WATCHDOG_LAUNCHER = ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh"]


def test_notify_protocol_hand_over_and_failed_upgrade(start, tmp_path):
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        _notify_scenario(start, tmp_path, notify)
    finally:
        notify.close()


def _notify_scenario(start, tmp_path: Path, notify: NotifyListener) -> None:
    app = write_http_app(tmp_path / "app.py", "1")
    pid_file = tmp_path / "master.pid"
    sock = tmp_path / "http.sock"
    run = start(
        "--app", str(app), "--workers", "2", "--pid", str(pid_file),
        "--listen", "127.0.0.1:0", "--listen", f"unix:{sock}",
        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"},
        prefix=WATCHDOG_LAUNCHER,
    )  # fmt: skip
    old = run.pid
    ready = notify.wait(old, "READY=1")
    assert f"STATUS=2 workers running, master pid={old}" in notify.message(ready)
    notify.wait(old, "WATCHDOG=1")
    # STATUS= follows the worker count.
    run.signal(signal.SIGTTIN)
    notify.wait(old, f"STATUS=3 workers running, master pid={old}")
    # HUP: RELOADING=1, then READY=1 once the new workers serve.
    run.signal(signal.SIGHUP)
    reloading = notify.wait(old, "RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in notify.message(reloading))
    last = notify.wait(old, "READY=1", after=reloading)
    run.wait_log("reload done")
    with Hammer(tcp_target(run.log())) as hammer:
        hammer.wait_answers(20)
        # A broken new version: the new master dies, the old one says READY=1 again.
        app.write_text(BROKEN_APP)
        run.signal(signal.SIGUSR2)
        reloading = notify.wait(old, "RELOADING=1", after=last)
        broken = new_master(run)
        run.wait_log(rf"new master pid={broken} exited \(exit 1\); this master carries on")
        last = notify.wait(old, "READY=1", after=reloading)
        assert not any(
            line.startswith("MAINPID=") for _, lines in notify.snapshot() for line in lines
        )
        assert read_pid(pid_file) == old
        hammer.wait_answers(20)
        # A good one: the new master becomes systemd's main process and ends the old one.
        write_http_app(app, "2")
        notify.hold()
        run.signal(signal.SIGUSR2)
        reloading = notify.wait(old, "RELOADING=1", after=last)
        new = new_master(run, 2)
        handover = notify.wait(new, f"MAINPID={new}", after=reloading)
        lines = notify.message(handover)
        assert "READY=1" in lines and f"STATUS=2 workers running, master pid={new}" in lines
        notify.wait(new, "BARRIER=1", after=handover)
        # Until systemd has read MAINPID= (the barrier's fd is closed), the old
        # master is left alone: it is still the main process.
        assert alive(old) and run.count("QUIT received") == 0
        notify.release()
        assert run.wait_exit() == 0  # the old master finished by itself
        after = time.monotonic()
        hammer.wait_answers(50)
    assert hammer.failures == [], hammer.failures[:10]
    assert hammer.versions_since(after) == {"2"}
    assert f"now systemd's main process; sending QUIT to old master pid={old}" in run.log()
    # After its USR2 the old master said nothing but watchdog pings: no READY=1,
    # no STATUS=, and above all no STOPPING=1 (systemd would stop the service).
    assert set(notify.lines_from(old, after=reloading)) <= {"WATCHDOG=1"}
    # The watchdog follows the main pid.
    notify.wait(new, "WATCHDOG=1", after=handover)
    assert read_pid(pid_file) == new
    assert not Path(f"{pid_file}.oldbin").exists()
    assert get(f"unix:{sock}")["master_pid"] == new
    os.kill(new, signal.SIGQUIT)
    notify.wait(new, "STOPPING=1", after=handover)
    wait_until(lambda: gone(new), 10, "the new master to exit")
    assert not sock.exists() and not pid_file.exists()


def test_watchdog_keeps_pinging_while_stopping_without_spinning(start, app_file, tmp_path):
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        app = app_file(slow_task_app())
        run = start(
            "--app", str(app),
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"},
            prefix=WATCHDOG_LAUNCHER,
        )  # fmt: skip
        notify.wait(run.pid, "READY=1")
        wait_until(lambda: "task start" in run.stdout(), 5, "a task to start")
        master = psutil.Process(run.pid)
        cpu_before = sum(master.cpu_times()[:2])
        run.signal(signal.SIGQUIT)
        stopping = notify.wait(run.pid, "STOPPING=1")
        # The worker needs about a second more for its task: pings go on meanwhile ...
        wait_until(
            lambda: notify.lines_from(run.pid, after=stopping).count("WATCHDOG=1") >= 5,
            5,
            "watchdog pings while stopping",
        )
        # ... and the master sleeps between them (it does not spin on a past deadline).
        cpu = sum(master.cpu_times()[:2]) - cpu_before
        assert "worker[0] exited" not in run.log(), "the task ended too soon to tell"
        assert cpu < 0.15, f"master used {cpu:.2f}s of CPU while stopping"
        assert run.wait_exit() == 0
    finally:
        notify.close()


LAUNCHER = r"""
import os, socket, sys
unix_path, port_file = sys.argv[1], sys.argv[2]
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", 0))
tcp.listen(128)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(unix_path)
unix.listen(128)
# As systemd does: the sockets at fd 3, 4, ...; LISTEN_PID is the pid that execs.
high = [os.dup(tcp.fileno()), os.dup(unix.fileno())]
tcp.close()
unix.close()
for target, fd in enumerate(high, start=3):
    os.dup2(fd, target, inheritable=True)
    os.close(fd)
with open(port_file + ".tmp", "w") as f:
    f.write(str(socket.socket(fileno=os.dup(3)).getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http:unix")
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_socket_activation_listeners_survive_upgrades_and_stay(start, tmp_path):
    app = write_http_app(tmp_path / "app.py", "1")
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    sock = tmp_path / "activated.sock"
    port_file = tmp_path / "port"
    run = start(
        "--app", str(app), "--workers", "2",
        prefix=[sys.executable, str(launcher), str(sock), str(port_file)],
    )  # fmt: skip
    workers = run.wait_ready(2)
    port = int(port_file.read_text())
    log = run.log()
    assert f"listening on 127.0.0.1:{port} fd=3 (from systemd)" in log
    assert f"listening on unix:{sock} fd=4 (from systemd)" in log
    assert get(f"127.0.0.1:{port}")["master_pid"] == run.pid
    assert get(f"unix:{sock}")["master_pid"] == run.pid
    # LISTEN_* was for the master only; workers do not see it.
    environ = psutil.Process(next(iter(workers.values()))).environ()
    assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(environ)
    # USR2 passes systemd's sockets on, still known as systemd's.
    write_http_app(app, "2")
    run.signal(signal.SIGUSR2)
    new = new_master(run)
    run.wait_log(rf"master process ready pid={new}\b")
    run.wait_log(rf"listening on unix:{re.escape(str(sock))} fd=4 \(from systemd\)", 2)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
    wait_until(lambda: get(f"unix:{sock}")["version"] == "2", 10, "version 2 on the unix socket")
    assert get(f"127.0.0.1:{port}")["master_pid"] == new
    stop_master(new)
    # The socket file belongs to the socket unit: nobody removed it.
    assert sock.exists()


def test_listen_fds_for_another_pid_are_ignored(start, app_file):
    app = app_file("def worker_start(worker):\n    import time; time.sleep(0.1)\n")
    run = start("--app", str(app), env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    run.wait_ready(1)
    assert listen_addresses(run.log()) == []
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def _unit(name: str) -> str:
    return (CONTRIB / name).read_text()


def _settings(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_unit_files_use_notify_graceful_stop_and_upgrade_on_reload():
    service = _settings(_unit("unicornish.service"))
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "all"  # the new master sends MAINPID=
    assert service["KillSignal"] == "SIGQUIT"
    assert service["KillMode"] == "mixed"
    assert re.fullmatch(r"\S*kill -USR2 \$MAINPID", service["ExecReload"])
    graceful = re.search(r"--graceful-timeout (\d+)", service["ExecStart"])
    assert graceful is not None
    assert int(service["TimeoutStopSec"]) > int(graceful.group(1))
    socket_unit = _settings(_unit("unicornish.socket"))
    listen = socket_unit["ListenStream"]
    assert f"--listen {listen}" in service["ExecStart"]  # the same socket, not bound twice


def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: install systemd's tools (make check should)"
    # verify wants ExecStart= to exist: point it at this checkout's bin/unicornish.
    service = re.sub(r"^ExecStart=\S+", f"ExecStart={BIN}", _unit("unicornish.service"), flags=re.M)
    (tmp_path / "unicornish.service").write_text(service)
    (tmp_path / "unicornish.socket").write_text(_unit("unicornish.socket"))
    result = subprocess.run(
        [analyze, "verify", "unicornish.socket", "unicornish.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "unicornish" in line  # other units on this machine may have their own warnings
    ]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr
