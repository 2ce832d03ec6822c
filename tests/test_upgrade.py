"""Upgrades that lose nothing (issue 4): USR2 + QUIT, HUP, a failed USR2, the back-out.

A real client hammers examples/http_app.py from several threads all along;
not one request may fail.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
from helpers import (
    BROKEN_APP,
    loop_app,
    new_master,
    read_pid,
    run_cli,
    stop_master,
    wait_until,
    worker_children,
)
from http_client import Hammer, get, tcp_target, write_http_app


def title(pid: int) -> str:
    # setproctitle pads the old argv area: psutil sees trailing empty arguments.
    return " ".join(psutil.Process(pid).cmdline()).rstrip()


def wait_master_up(run, pid: int, workers: int) -> None:
    run.wait_log(rf"master process ready pid={pid}\b")
    wait_until(lambda: len(worker_children(pid)) == workers, 10, f"{workers} workers of {pid}")


def test_usr2_then_quit_old_loses_no_request(start, tmp_path):
    app = write_http_app(tmp_path / "app.py", "1")
    pid_file = tmp_path / "master.pid"
    marker = tmp_path / "before_exec.txt"
    config = tmp_path / "conf.py"
    config.write_text(
        "def before_exec(master):\n"
        f"    with open({str(marker)!r}, 'a') as f:\n"
        "        f.write(f'{master.pid}\\n')\n"
    )
    run = start(
        "--app", str(app), "--workers", "2", "--listen", "127.0.0.1:0",
        "--pid", str(pid_file), "-c", str(config),
    )  # fmt: skip
    run.wait_ready(2)
    wait_until(lambda: read_pid(pid_file) == run.pid, 5, "the pid file")
    target = tcp_target(run.log())
    with Hammer(target) as hammer:
        hammer.wait_answers(20)
        write_http_app(app, "2")
        run.signal(signal.SIGUSR2)
        new = new_master(run)
        wait_master_up(run, new, 2)
        # Both masters serve; the pid files say who is who.
        wait_until(lambda: read_pid(pid_file) == new, 5, "the new master's pid file")
        assert read_pid(Path(f"{pid_file}.oldbin")) == run.pid
        # The app as given and the first listen address: `ps | grep` finds both.
        address = tcp_target(run.log())
        assert title(run.pid) == f"unicornish master (old) {app} {address}", title(run.pid)
        assert title(new) == f"unicornish master {app} {address}", title(new)
        assert marker.read_text() == f"{run.pid}\n"  # before_exec ran in the old master
        hammer.wait_version("2")
        # A second USR2 while the new master runs is refused.
        run.signal(signal.SIGUSR2)
        run.wait_log(rf"USR2 ignored: new master pid={new} is still running")
        # Unicorn's way: QUIT the old master; its workers finish what they accepted.
        run.signal(signal.SIGQUIT)
        assert run.wait_exit() == 0
        after = time.monotonic()
        hammer.wait_answers(50)
    assert hammer.failures == [], hammer.failures[:10]
    assert len(hammer.answers) > 100
    assert hammer.versions_since(after) == {"2"}
    assert hammer.masters_since(after) == {new}
    assert {a.version for a in hammer.answers} == {"1", "2"}
    assert not Path(f"{pid_file}.oldbin").exists()
    assert read_pid(pid_file) == new
    assert run.count(r"USR2: started new master") == 1
    stop_master(new)
    assert not pid_file.exists()


def test_hup_loses_no_request(start, tmp_path):
    app = write_http_app(tmp_path / "app.py", "1")
    run = start("--app", str(app), "--workers", "2", "--listen", "127.0.0.1:0")
    old_workers = [psutil.Process(pid) for pid in run.wait_ready(2).values()]
    with Hammer(tcp_target(run.log())) as hammer:
        hammer.wait_answers(20)
        write_http_app(app, "2")
        run.signal(signal.SIGHUP)
        run.wait_log(r"reload done")
        wait_until(lambda: not any(p.is_running() for p in old_workers), 10, "old workers gone")
        after = time.monotonic()
        hammer.wait_answers(50)
    assert hammer.failures == [], hammer.failures[:10]
    assert hammer.versions_since(after) == {"2"}
    assert {a.version for a in hammer.answers} == {"1", "2"}
    assert hammer.masters_since(0) == {run.pid}
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_failed_usr2_restores_pid_file_and_keeps_serving(start, tmp_path):
    app = write_http_app(tmp_path / "app.py", "1")
    pid_file = tmp_path / "master.pid"
    run = start(
        "--app", str(app), "--workers", "2", "--listen", "127.0.0.1:0", "--pid", str(pid_file)
    )  # fmt: skip
    run.wait_ready(2)
    with Hammer(tcp_target(run.log())) as hammer:
        hammer.wait_answers(20)
        app.write_text(BROKEN_APP)
        run.signal(signal.SIGUSR2)
        broken = new_master(run)
        run.wait_log(rf"new master pid={broken} exited \(exit 1\); this master carries on")
        assert "SyntaxError" in run.log()  # the new master said why, in the same log
        assert read_pid(pid_file) == run.pid
        assert not Path(f"{pid_file}.oldbin").exists()
        assert title(run.pid).startswith(f"unicornish master {app} "), title(run.pid)
        hammer.wait_answers(50)
        assert hammer.versions_since(0) == {"1"}
        # Fixed, the next USR2 goes through.
        write_http_app(app, "3")
        run.signal(signal.SIGUSR2)
        new = new_master(run, 2)
        wait_master_up(run, new, 2)
        hammer.wait_version("3")
        run.signal(signal.SIGQUIT)
        assert run.wait_exit() == 0
        after = time.monotonic()
        hammer.wait_answers(30)
    assert hammer.failures == [], hammer.failures[:10]
    assert hammer.versions_since(after) == {"3"}
    assert read_pid(pid_file) == new
    stop_master(new)


def test_back_out_usr2_winch_old_hup_old_quit_new(start, tmp_path):
    """Symlinked releases: the new master resolves `current` anew ($PWD); backing out
    brings the old release's workers back under the old master."""
    releases = tmp_path / "releases"
    for version in ("1", "2"):
        (releases / version).mkdir(parents=True)
        write_http_app(releases / version / "app.py", version)
    current = tmp_path / "current"
    current.symlink_to(releases / "1")
    pid_file = tmp_path / "master.pid"
    sock = tmp_path / "http.sock"
    run = start(
        "--app", "app.py", "--workers", "2", "--pid", str(pid_file),
        "--listen", "127.0.0.1:0", "--listen", f"unix:{sock}",
        cwd=current, env={"PWD": str(current)},
    )  # fmt: skip
    run.wait_ready(2)
    with Hammer(tcp_target(run.log())) as hammer:
        hammer.wait_answers(20)
        # Deploy release 2: swing the symlink, USR2.
        link = tmp_path / "current.new"
        link.symlink_to(releases / "2")
        link.replace(current)
        run.signal(signal.SIGUSR2)
        new = new_master(run)
        wait_master_up(run, new, 2)
        assert psutil.Process(new).cwd() == str(releases / "2")
        hammer.wait_version("2")
        # Back out: WINCH the old master (its workers leave, it stays) ...
        run.signal(signal.SIGWINCH)
        wait_until(lambda: not worker_children(run.pid), 10, "old workers gone after WINCH")
        after_winch = time.monotonic()
        hammer.wait_answers(30)
        assert hammer.versions_since(after_winch) == {"2"}
        # ... HUP it: workers of release 1 again, from its own directory ...
        run.signal(signal.SIGHUP)
        wait_until(lambda: len(worker_children(run.pid)) == 2, 10, "old master's workers back")
        after_hup = time.monotonic()
        wait_until(lambda: "1" in hammer.versions_since(after_hup), 10, "release 1 answering")
        # ... and QUIT the new master.
        os.kill(new, signal.SIGQUIT)
        run.wait_log(rf"new master pid={new} exited \(exit 0\); this master carries on")
        after_quit = time.monotonic()
        hammer.wait_answers(50)
        # The new master left the unix socket file to the old master, which serves it.
        assert get(f"unix:{sock}")["master_pid"] == run.pid
    assert hammer.failures == [], hammer.failures[:10]
    assert hammer.versions_since(after_quit) == {"1"}
    assert hammer.masters_since(after_quit) == {run.pid}
    assert read_pid(pid_file) == run.pid
    assert not Path(f"{pid_file}.oldbin").exists()
    assert title(run.pid).startswith("unicornish master app.py"), title(run.pid)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
    assert not sock.exists()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_listing(pid: int) -> list[str]:
    listing = []
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            listing.append(f"{name} -> {os.readlink(f'/proc/{pid}/fd/{name}')}")
        except OSError:
            continue
    return listing


def test_master_fds_do_not_grow_over_usr2_quit_cycles(start, tmp_path):
    app = write_http_app(tmp_path / "app.py", "0")
    pid_file = tmp_path / "master.pid"
    sock = tmp_path / "http.sock"
    run = start(
        "--app", str(app), "--workers", "1", "--pid", str(pid_file),
        "--listen", "127.0.0.1:0", "--listen", f"unix:{sock}",
    )  # fmt: skip
    run.wait_ready(1)
    target = tcp_target(run.log())
    master = run.pid
    counts = [fd_count(master)]
    listings = [fd_listing(master)]
    for cycle in range(1, 6):
        write_http_app(app, str(cycle))
        os.kill(master, signal.SIGUSR2)
        new = new_master(run, cycle)
        wait_master_up(run, new, 1)
        wait_until(lambda new=new: read_pid(pid_file) == new, 5, "the new pid file")
        stop_master(master)
        master = new
        version = str(cycle)
        wait_until(lambda v=version: get(target)["version"] == v, 10, f"version {version}")
        counts.append(fd_count(master))
        listings.append(fd_listing(master))
    assert len(set(counts[1:])) == 1, (counts, listings)
    assert counts[-1] <= counts[0], (counts, listings)
    assert get(f"unix:{sock}")["master_pid"] == master
    stop_master(master)
    assert not sock.exists()


def test_usr2_hands_the_scaled_count_to_the_new_master_and_hup_goes_back(start, app_file):
    """TTIN met a load: the new master must not start with half the workers."""
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "2")
    run.wait_ready(2)
    for n in (3, 4):
        run.signal(signal.SIGTTIN)
        run.wait_workers(n)
    run.signal(signal.SIGUSR2)
    new = new_master(run)
    wait_master_up(run, new, 4)
    run.wait_log(rf"workers: 4 wanted \(4:4\), as old master pid={run.pid} had them")
    assert "USR2: handing the worker count to the new master: 4" in run.log()
    stop_master(run.pid)
    # HUP keeps its meaning: back to the configured count.
    os.kill(new, signal.SIGHUP)
    wait_until(lambda: len(worker_children(new)) == 2, 10, "the configured 2 workers")
    stop_master(new)


IDLE_APP = """
import time
def worker_start(worker):
    with worker.idle():  # idle workers: the adaptive count stays at MIN
        time.sleep(0.05)
"""


def test_usr2_hands_the_moved_adaptive_bounds_to_the_new_master(start, app_file, tmp_path):
    app = app_file(IDLE_APP)
    control = tmp_path / "ctl.sock"
    run = start("--app", str(app), "--workers", "2:8", "--control", str(control))
    run.wait_ready(2)
    run.signal(signal.SIGTTIN)  # MIN and MAX move together: 3:9
    run.wait_log(r"TTIN: 3 workers wanted \(workers 3:9\)")
    run.signal(signal.SIGUSR2)
    new = new_master(run)
    wait_master_up(run, new, 3)

    def status() -> dict:
        result = run_cli("status", "--json", "--control", str(control))
        return json.loads(result.stdout)["master"] if result.returncode == 0 else {}

    wait_until(lambda: status().get("pid") == new, 10, "the new master's control socket")
    master = status()
    assert (master["workers_min"], master["workers_max"]) == (3, 9), master
    assert master["workers_wanted"] == 3
    stop_master(run.pid)
    stop_master(new)
