"""Faults (issue 7): what production does to a supervisor. Each test makes the
fault happen for real, shows the master keeps running, then shows it recovers
once the fault goes away."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import BIN, ROOT, alive, fill, loop_app, wait_until, worker_children
from reliability import PrefixedRun, ScratchUser, log_tracebacks, scratch_user, shared_dir, zombies


def respawns_after_kill(run, nr: int = 0, timeout: float = 10.0) -> int:
    """SIGKILL worker[nr]; wait for its replacement; return the new pid."""
    old = run.wait_workers(len(run.worker_pids()))[nr]
    os.kill(old, signal.SIGKILL)
    return int(
        wait_until(
            lambda: run.worker_pids().get(nr) not in (None, old) and run.worker_pids().get(nr),
            timeout,
            f"worker[{nr}] replaced after SIGKILL:\n{run.log()[-2000:]}",
        )
    )


@pytest.fixture
def user() -> Iterator[ScratchUser]:
    yield from scratch_user()


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    path = shared_dir(tmp_path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- stdio -------------------------------------------------------------------------


def test_master_started_with_stdio_closed(tmp_path, app_file):
    """fd 0, 1 and 2 closed at start: the master must not hand those numbers to
    its own pipes (its log lines would land in its signal pipe)."""
    app = app_file(loop_app())
    log_path = tmp_path / "log"
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            'exec "$0" "$@" <&- >&- 2>&-',
            str(BIN),
            "--app",
            str(app),
            "--workers",
            "2",
            "--log-file",
            str(log_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(worker_children(proc.pid)) == 2, 10, "2 workers")
        os.kill(proc.pid, signal.SIGTTIN)
        wait_until(lambda: len(worker_children(proc.pid)) == 3, 10, "3 workers after TTIN")
        os.kill(proc.pid, signal.SIGUSR1)
        wait_until(lambda: "reopened log files" in log_path.read_text(), 5, "USR1 handled")
        for fd in (0, 1):
            assert os.readlink(f"/proc/{proc.pid}/fd/{fd}") == "/dev/null"
        os.kill(proc.pid, signal.SIGQUIT)
        assert proc.wait(10) == 0
        log = log_path.read_text()
        assert log.count("reopened log files") == 1, log
        assert log_tracebacks(log) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_app_that_closes_its_stdio(start, app_file):
    app = app_file("""
        import os, time
        def after_fork(worker):
            for fd in (0, 1, 2):
                os.close(fd)
        def worker_start(worker):
            worker.log.info("this line is lost: stderr is closed")
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2")
    pids = run.wait_workers(2)
    run.wait_log(r"worker\[\d\] ready", 0)
    wait_until(lambda: run.count(r"spawned pid=") == 2, 5, "two spawns")
    # The workers keep running their tasks (no crash loop), the master serves signals.
    wait_until(
        lambda: all(psutil.Process(p).cpu_times().user >= 0 for p in pids.values()), 2, "alive"
    )
    run.signal(signal.SIGTTIN)
    run.wait_workers(3)
    assert all(alive(p) for p in pids.values())
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    log = run.log()
    assert "this line is lost" not in log
    for pid in pids.values():
        assert f"reaped pid={pid} worker[" in log and "status=exit 0" in log
    assert run.count(r"status=exit 0") == 3, log


# -- stuck and stubborn workers --------------------------------------------------------


def test_sigstopped_worker_is_killed_by_timeout(start, app_file):
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "2", "--timeout", "1")
    pids = run.wait_ready(2)
    os.kill(pids[1], signal.SIGSTOP)
    stopped_at = time.monotonic()
    run.wait_log(rf"worker\[1\] pid={pids[1]} timed out", 1, 10)
    run.wait_log(rf"reaped pid={pids[1]} worker\[1\] status=killed by SIGKILL", 1, 5)
    assert time.monotonic() - stopped_at < 5
    new = run.wait_ready(2, 10)
    assert new[1] != pids[1] and new[0] == pids[0]
    assert run.count(r"pid=\d+ timed out: task running") == 1


@pytest.mark.parametrize("how", ["QUIT", "TERM", "TTOU"])
def test_worker_ignoring_term_and_quit_gets_sigkill(start, app_file, how):
    app = app_file("""
        import signal, time
        def after_fork(worker):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        def worker_start(worker):
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2", "--graceful-timeout", "1")
    pids = run.wait_ready(2)
    began = time.monotonic()
    run.signal(getattr(signal, "SIG" + how))
    if how == "TTOU":
        run.wait_log(rf"reaped pid={pids[1]} worker\[1\] status=killed by SIGKILL", 1, 5)
        assert run.worker_pids() == {0: pids[0]}
        run.signal(signal.SIGTTIN)
        run.wait_workers(2)
        run.signal(signal.SIGKILL)
        return
    assert run.wait_exit(6) == 0
    assert time.monotonic() - began < 4
    log = run.log()
    assert run.count(r"status=killed by SIGKILL") == 2, log
    assert not any(alive(p) for p in pids.values())


@pytest.mark.parametrize("subreaper", [False, True], ids=["plain", "subreaper"])
def test_worker_that_forks_children_and_exits(start, app_file, tmp_path, subreaper):
    """The grandchildren are not the master's (unless --subreaper: then it reaps
    them when they end, and never mistakes one for a worker)."""
    app = app_file(f"""
        import os, sys, time
        def worker_start(worker):
            if worker.tasks == 0:
                for _ in range(2):
                    if os.fork() == 0:
                        open({str(tmp_path)!r} + "/grandchild.%d" % os.getpid(), "w").close()
                        time.sleep(1)
                        os._exit(0)
                if not os.path.exists({str(tmp_path / "stop")!r}):
                    sys.exit(0)
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2", *(["--subreaper"] if subreaper else []))
    wait_until(lambda: run.count(r"reaped pid=\d+ worker\[\d\] status=exit 0") >= 4, 10, "exits")
    (tmp_path / "stop").write_text("")
    pids = run.wait_ready(2, 10)
    grandchildren = {int(p.name.split(".")[1]) for p in tmp_path.glob("grandchild.*")}
    assert len(grandchildren) >= 8
    # Only workers under the master; no zombie; a grandchild is never taken for a worker.
    wait_until(lambda: sorted(worker_children(run.pid)) == sorted(pids.values()), 5, "workers")
    wait_until(lambda: zombies(run.pid) == [], 5, "no zombie")
    for pid in grandchildren:  # (they carry their worker's title, but not for the master)
        assert f"reaped pid={pid} worker[" not in run.log()
    if subreaper:
        # Each grandchild whose worker had exited is reaped here once it ends.
        wait_until(lambda: run.count(r"reaped orphan pid=\d+ status=exit 0") >= 8, 10, "orphans")
        reaped = {int(p) for p in re.findall(r"reaped orphan pid=(\d+)", run.log())}
        assert reaped <= grandchildren
    else:
        assert "orphan" not in run.log()
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(5) == 0


SETSID_APP = """
import errno, os, signal, time
def after_fork(worker):
    # A worker leads its own process group (the master kills the whole group),
    # and a group leader cannot start a session: setsid() must fail with EPERM.
    try:
        os.setsid()
        print("setsid worked", flush=True)
    except PermissionError as exc:
        print("setsid failed", errno.errorcode[exc.errno], flush=True)
    # The app's own handlers replace the worker's (QUIT is also the parent-death signal).
    signal.signal(signal.SIGQUIT, lambda *a: print("app got QUIT", flush=True))
    signal.signal(signal.SIGTERM, lambda *a: print("app got TERM", flush=True))
def worker_start(worker):
    time.sleep(0.2)
"""


def test_worker_with_setsid_and_own_handlers_is_still_managed(start, app_file):
    app = app_file(SETSID_APP)
    run = start("--app", str(app), "--workers", "2", "--graceful-timeout", "1")
    pids = run.wait_ready(2)
    for pid in pids.values():
        assert os.getpgid(pid) == pid
    assert run.stdout().count("setsid failed EPERM") == 2
    # TTOU: QUIT is not obeyed, the SIGKILL after the graceful timeout reaches it anyway.
    run.signal(signal.SIGTTOU)
    run.wait_log(rf"reaped pid={pids[1]} worker\[1\] status=killed by SIGKILL", 1, 5)
    # A killed master: its workers notice (getppid after each task) and exit on their own.
    os.kill(run.pid, signal.SIGKILL)
    run.wait_exit(5)
    wait_until(lambda: not alive(pids[0]), 5, "worker[0] to exit after its master died")
    assert "app got QUIT" in run.stdout()  # the parent-death signal went to the app


def test_idle_worker_with_replaced_quit_handler_notices_dead_master(start, app_file):
    """Blocked in worker.accept(), the worker re-checks its master every second."""
    app = app_file("""
        import signal
        def after_fork(worker):
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        def worker_start(worker):
            got = worker.accept()
            if got:
                got[0].close()
    """)
    run = start("--app", str(app), "--workers", "1", "--listen", "unix:sock")
    pids = run.wait_ready(1)
    os.kill(run.pid, signal.SIGKILL)
    run.wait_exit(5)
    wait_until(lambda: not alive(pids[0]), 5, "idle worker to exit after its master died")


# -- output and failing apps ----------------------------------------------------------


def test_worker_printing_megabytes(start, app_file):
    app = app_file("""
        import sys, time
        def worker_start(worker):
            if worker.tasks < 3:
                sys.stdout.write("x" * 3_000_000 + "\\n")
                sys.stderr.write("y" * 3_000_000 + "\\n")
                sys.stdout.flush()
                sys.stderr.flush()
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2")
    run.wait_ready(2)
    wait_until(lambda: run.out_path.stat().st_size >= 18_000_000, 20, "18 MB of stdout")
    wait_until(lambda: run.log_path.stat().st_size >= 18_000_000, 20, "18 MB of stderr")
    respawns_after_kill(run, 1)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    # The master's own lines are whole lines, not cut by the workers' output.
    with open(run.log_path, "rb") as handle:
        for line in handle:
            if b"reaped pid=" in line or b"master exited" in line:
                assert re.match(rb"^\[\d{4}-\d\d-\d\dT[\d:]{8} #\d+\] \w", line), line[:200]


def test_master_is_not_blocked_by_a_stalled_log_pipe(tmp_path, app_file):
    """stderr is a pipe nobody reads (a stalled journald or `| logger`) while
    workers print megabytes into it: the master must still reap and respawn."""
    app = app_file("""
        import sys, time
        def worker_start(worker):
            sys.stderr.write("z" * 200_000 + "\\n")
            sys.stderr.flush()
            time.sleep(0.01)
    """)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [str(BIN), "--app", str(app), "--workers", "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        wait_until(lambda: len(worker_children(proc.pid)) == 2, 10, "2 workers")
        # Nobody reads: the pipe fills up and the workers block in write().
        first = worker_children(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        wait_until(
            lambda: (
                first[0] not in worker_children(proc.pid) and len(worker_children(proc.pid)) == 2
            ),
            5,
            "a replacement while the log pipe is full",
        )
        os.kill(proc.pid, signal.SIGTTIN)
        wait_until(lambda: len(worker_children(proc.pid)) == 3, 5, "TTIN while the pipe is full")
        # Reading again: everything flows, the master stops cleanly.
        drained = bytearray()
        os.set_blocking(read_end, False)
        os.kill(proc.pid, signal.SIGQUIT)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                drained += os.read(read_end, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        assert proc.wait(1) == 0
        # What the master wrote just before it exited may still sit in the pipe.
        while True:
            try:
                chunk = os.read(read_end, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            drained += chunk
        # The lines dropped while the pipe was full are counted and said.
        assert re.search(rb"\] \d+ log lines dropped: log output was full", drained)
        assert b"master exited" in drained
    finally:
        os.close(read_end)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_task_raising_on_every_call_then_fixed(start, app_file, tmp_path):
    broken = tmp_path / "broken"
    broken.write_text("")
    app = app_file(f"""
        import os, time
        def worker_start(worker):
            if os.path.exists({str(broken)!r}):
                raise RuntimeError("the database is down")
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2")
    run.wait_log("crash loop", 1, 10)
    began = time.monotonic()
    run.signal(signal.SIGTTIN)  # the master stays responsive during the crash loop
    run.wait_log(r"TTIN: 3 workers wanted", 1, 2)
    assert time.monotonic() - began < 1.5
    spawned = run.count(r"spawned pid=")
    broken.unlink()
    pids = run.wait_ready(3, 15)
    # Stable: the same workers a while later, and no new spawns.
    wait_until(lambda: all(psutil.Process(p).cpu_times() for p in pids.values()), 1, "alive")
    settled = run.count(r"spawned pid=")
    run.signal(signal.SIGUSR1)
    run.wait_log("reopened log files", 1, 5)
    assert run.worker_pids() == pids
    assert run.count(r"spawned pid=") == settled
    assert spawned < 60, spawned  # backoff: no fork bomb while it was broken
    assert run.count("RuntimeError: the database is down") >= 2


# -- the log file -----------------------------------------------------------------------


def test_log_disk_full_then_freed(small_fs, start, app_file):
    app = app_file(loop_app())
    log_path = small_fs / "unicornish.host.log"
    run = start("--app", str(app), "--workers", "2", "--log-file", str(log_path), log_file=False)
    run.log_path = log_path
    run.wait_ready(2)
    with open(log_path, "ab") as handle:  # end the log on a page boundary (tmpfs pages)
        handle.write(b"#" * (-log_path.stat().st_size % 4096))
    filler = fill(small_fs)
    size = log_path.stat().st_size
    # The disk is full: the master and workers keep going, their lines are dropped.
    respawns_after_kill(run, 0)
    run.signal(signal.SIGTTIN)
    run.wait_workers(3)
    run.signal(signal.SIGUSR1)
    run.signal(signal.SIGTTOU)
    run.wait_workers(2)
    assert log_path.stat().st_size == size
    # Space again: the same log file gets lines again, without a reopen.
    filler.unlink()
    run.signal(signal.SIGTTIN)
    run.wait_log(r"TTIN: 3 workers wanted", 1, 5)
    run.wait_workers(3)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert "master exited" in run.log()


def test_log_pipe_closed_by_its_reader(tmp_path, app_file):
    """EPIPE on every log write: neither the master nor its workers may die of it."""
    app = app_file(loop_app())
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [str(BIN), "--app", str(app), "--workers", "2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        start_new_session=True,
    )
    os.close(write_end)
    try:
        wait_until(lambda: len(worker_children(proc.pid)) == 2, 10, "2 workers")
        os.close(read_end)
        read_end = -1
        first = worker_children(proc.pid)
        os.kill(first[0], signal.SIGKILL)  # the master logs (EPIPE), the new worker logs
        os.kill(proc.pid, signal.SIGTTIN)
        os.kill(proc.pid, signal.SIGUSR1)
        # The killed one is not counted until it is dead: a SIGKILL is acted on when
        # its target next runs, which on a busy machine may be after the TTIN's fork.
        wait_until(
            lambda: len(live := worker_children(proc.pid)) == 3 and first[0] not in live,
            5,
            "3 workers, the killed one replaced",
        )
        settled = sorted(worker_children(proc.pid))
        # They stay: no worker dies of SIGPIPE when it writes a log line.
        os.kill(proc.pid, signal.SIGUSR1)
        wait_until(lambda: proc.poll() is None, 1, "master alive")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert sorted(worker_children(proc.pid)) == settled
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGQUIT)
        assert proc.wait(10) == 0
    finally:
        if read_end >= 0:
            os.close(read_end)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_log_file_cannot_be_reopened_then_can(start, app_file, tmp_path):
    """Rotation moved the log directory away: USR1 fails, logs go on in the old file;
    once the directory is back, USR1 reopens the log there."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log_path = logs / "unicornish.host.log"
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "1", "--log-file", str(log_path), log_file=False)
    run.log_path = log_path
    run.wait_ready(1)
    moved = tmp_path / "logs.1"
    logs.rename(moved)
    run.log_path = moved / "unicornish.host.log"
    run.signal(signal.SIGUSR1)
    run.wait_log(r"cannot reopen log file", 1, 5)
    respawns_after_kill(run, 0)
    logs.mkdir()
    run.signal(signal.SIGUSR1)
    wait_until(
        lambda: log_path.exists() and "reopened log files" in log_path.read_text(), 5, "reopen"
    )
    run.log_path = log_path
    respawns_after_kill(run, 0)
    run.wait_log(r"worker\[0\] ready", 1, 5)  # the new worker writes to the new file too


# -- the master's resources -----------------------------------------------------------------


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    fd = 0
    while fd in used:
        fd += 1
    return fd


def test_master_out_of_file_descriptors(start, app_file, tmp_path):
    app = app_file(loop_app())
    control = str(tmp_path / "ctl.sock")
    run = start("--app", str(app), "--workers", "2", "--control", control)
    pids = run.wait_ready(2)
    proc = psutil.Process(run.pid)
    limits = proc.rlimit(psutil.RLIMIT_NOFILE)
    # Not one more descriptor: every open() in the master fails with EMFILE.
    proc.rlimit(psutil.RLIMIT_NOFILE, (lowest_free_fd(run.pid), limits[1]))
    run.signal(signal.SIGUSR1)
    run.wait_log(r"cannot reopen log file .*: Too many open files", 1, 5)
    run.signal(signal.SIGHUP)
    run.wait_log(r"reload failed: .*Too many open files", 1, 5)
    # Control clients it cannot accept: no busy loop on the readable socket.
    clients = []
    for _ in range(10):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(control)
        sock.sendall(b"status\n")
        clients.append(sock)
    run.wait_log(r"control: cannot accept: Too many open files", 1, 5)
    cpu = sum(proc.cpu_times()[:2])
    began = time.monotonic()
    wait_until(lambda: time.monotonic() - began >= 2, 3, "two seconds")
    assert sum(proc.cpu_times()[:2]) - cpu < 0.5, "the master spins while out of fds"
    # A new worker inherits the limit: it boots only with the fds the master's own
    # (closed in the child) leave it, or crash-loops; either way the master goes on.
    os.kill(pids[1], signal.SIGKILL)
    run.wait_log(rf"reaped pid={pids[1]} worker\[1\]", 1, 10)
    run.wait_log(r"worker\[1\] spawned pid=", 2, 10)
    assert alive(run.pid) and run.worker_pids()[0] == pids[0]
    proc.rlimit(psutil.RLIMIT_NOFILE, limits)
    new = run.wait_ready(2, 15)
    assert new[0] == pids[0] and new[1] != pids[1]
    run.signal(signal.SIGUSR1)
    run.wait_log(r"reopened log files", 1, 5)
    # The waiting clients get their answers, and new ones too.
    for sock in clients:
        sock.settimeout(10)
        assert json.loads(sock.makefile("rb").readline())["ok"] is True
        sock.close()
    done = subprocess.run(
        [str(BIN), "ctl", "--control", control, "status"], capture_output=True, timeout=20
    )
    assert done.returncode == 0, done
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


def vm_size(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_master_out_of_memory(start, app_file):
    """RLIMIT_AS at the master's current size: every new mapping (a worker's
    scoreboard, Python's own allocations) fails. The master must not die."""
    app = app_file(loop_app())
    run = start("--app", str(app), "--workers", "2")
    pids = run.wait_ready(2)
    proc = psutil.Process(run.pid)
    limits = proc.rlimit(psutil.RLIMIT_AS)
    proc.rlimit(psutil.RLIMIT_AS, (vm_size(run.pid), limits[1]))
    run.signal(signal.SIGTTIN)
    os.kill(pids[1], signal.SIGKILL)
    run.wait_log(r"worker\[\d\] cannot spawn: scoreboard: Cannot allocate memory|loop error", 1, 10)
    assert alive(run.pid)
    proc.rlimit(psutil.RLIMIT_AS, limits)
    run.wait_workers(3, 20)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A cgroup whose pids.max limits fork() for root too (root ignores RLIMIT_NPROC,
    and a throwaway user cannot run this venv's interpreter, which lives under /root)."""
    if not (PIDS_CGROUP / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids controller here")
    group = PIDS_CGROUP / f"unicornish-test-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        wait_until(lambda: not (group / "cgroup.procs").read_text().split(), 5, "empty cgroup")
        group.rmdir()


def test_fork_fails_on_process_limit_then_recovers(tmp_path, app_file, pids_cgroup):
    app = app_file(loop_app())
    (pids_cgroup / "pids.max").write_text("3")  # the master and two workers
    join = ["sh", "-c", f'echo $$ > {pids_cgroup}/cgroup.procs && exec "$@"', "sh"]
    run = PrefixedRun(tmp_path, join, ["--app", str(app), "--workers", "4"])
    try:
        wait_until(lambda: "fork failed" in run.log(), 10, "a fork failure")
        assert len(run.wait_workers(2)) == 2
        run.signal(signal.SIGTTIN)  # still serving signals
        run.wait_log(r"TTIN: 5 workers wanted", 1, 5)
        assert alive(run.pid)
        (pids_cgroup / "pids.max").write_text("max")
        run.wait_ready(5, 20)
        run.signal(signal.SIGQUIT)
        assert run.wait_exit(10) == 0
        log = run.log()
        assert re.search(r"worker\[\d\] fork failed: Resource temporarily unavailable", log)
        assert log_tracebacks(log) == []
    finally:
        run.cleanup()


# -- time -------------------------------------------------------------------------------

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_deadlines_never_read_the_wall_clock():
    """time.time() only labels things for people; every deadline uses time.monotonic()."""
    uses = []
    package = ROOT / "unicornish"
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > len(list(package.glob("*.py"))), "the sub-packages are searched too"
    for path in modules:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"time\.time\(\)|datetime\.now|time\.localtime|time\.gmtime", line):
                uses.append(f"{path.relative_to(package)}:{number}: {line.strip()}")
    allowed = (
        "spawned_wall",  # shown to people (status: when a worker started)
        "def timestamp",  # log line stamps
        "localtime(now)",
        "wall = time.time()",  # status output
        # unicornish_master_start_time_seconds: Prometheus wants seconds since the epoch
        "metrics/families.py: self.start_time = time.time()",
        # cpu percent = cpu time / (now - psutil's create_time), which is wall-clock based
        "metrics/procstats.py: now = time.time() if now is None else now",
        "ctl/client.py: now = time.time()",
        # the Date header of --wsgi's responses (RFC 9110: the wall clock)
        "http/server.py: now = int(time.time())",
        "http/server.py: t = time.gmtime(seconds)",
    )
    suspicious = [
        u
        for u in uses
        if not any(word in u or word in re.sub(r":\d+:", ":", u) for word in allowed)
    ]
    assert suspicious == [], "\n".join(suspicious)


@pytest.mark.skipif(
    not os.path.exists(FAKETIME_LIB), reason="Debian's libfaketime is not installed"
)
def test_wall_clock_jumps_do_not_trigger_or_delay_timeouts(start, app_file, tmp_path):
    """libfaketime moves the master's and workers' wall clock by hours, back and
    forth, while CLOCK_MONOTONIC stays real: no false timeout, no missed one."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    # select(), not time.sleep(): libfaketime 0.9.10 breaks the absolute
    # CLOCK_MONOTONIC clock_nanosleep() that time.sleep() uses.
    app = app_file(f"""
        import os, select
        def worker_start(worker):
            if worker.nr == 1 and os.path.exists({str(tmp_path / "stick")!r}):
                select.select([], [], [], 3600)
            select.select([], [], [], 0.1)
    """)
    env = {
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }
    run = start("--app", str(app), "--workers", "2", "--timeout", "2", env=env)
    pids = run.wait_ready(2)
    offset.write_text("+3h\n")
    run.signal(signal.SIGUSR1)  # a line stamped with the new wall clock
    run.wait_log("reopened log files", 1, 5)
    offset.write_text("-5h\n")
    run.signal(signal.SIGUSR1)
    run.wait_log("reopened log files", 2, 5)
    stamps = re.findall(r"^\[(\S+) #\d+\] reopened log files", run.log(), re.M)
    assert len(stamps) == 2 and stamps[0][:13] != stamps[1][:13], stamps  # the jump happened
    # No task ran 2 s, so nobody is killed, whatever the wall clock says.
    wait_until(lambda: psutil.Process(run.pid).cpu_times(), 1, "master alive")
    assert "timed out" not in run.log() and run.worker_pids() == pids
    # A stuck task is killed after ~2 s of real time, not 5 h off.
    (tmp_path / "stick").write_text("")
    stuck_at = time.monotonic()
    run.wait_log(rf"worker\[1\] pid={pids[1]} timed out", 1, 8)
    assert time.monotonic() - stuck_at < 6
    offset.write_text("+0\n")
    (tmp_path / "stick").unlink()
    run.wait_ready(2, 10)
    assert run.count("timed out") == 1
    # The jumps (hours) never read as a suspension. A machine busy enough to wake
    # the master over a second late is a real one (seconds), logged as such.
    suspensions = re.findall(r"master was suspended for ([\d.]+)s", run.log())
    assert all(float(seconds) < 60 for seconds in suspensions), suspensions


def test_worker_out_of_fds_in_accept_does_not_spin(start, app_file, tmp_path):
    """A worker at its fd limit with a connection waiting: accept() fails with
    EMFILE; the worker must wait, not spin, and serve once an fd is free."""
    app = app_file("""
        def worker_start(worker):
            got = worker.accept()
            if got:
                conn, _ = got
                conn.sendall(b"hi\\n")
                conn.close()
    """)
    sock_path = tmp_path / "l.sock"
    run = start("--app", str(app), "--workers", "1", "--listen", f"unix:{sock_path}")
    pid = run.wait_ready(1)[0]

    def has_epoll() -> bool:
        fd_dir = f"/proc/{pid}/fd"
        return any("eventpoll" in os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir))

    wait_until(has_epoll, 5, "the worker waiting in accept()")
    worker = psutil.Process(pid)
    limits = worker.rlimit(psutil.RLIMIT_NOFILE)
    worker.rlimit(psutil.RLIMIT_NOFILE, (lowest_free_fd(pid), limits[1]))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(sock_path))
    cpu = sum(worker.cpu_times()[:2])
    began = time.monotonic()
    wait_until(lambda: time.monotonic() - began >= 1.5, 3, "a second and a half")
    used = sum(worker.cpu_times()[:2]) - cpu
    assert used < 0.3, f"the worker spun: {used:.2f}s of CPU in 1.5s"
    worker.rlimit(psutil.RLIMIT_NOFILE, limits)
    assert client.makefile("rb").readline() == b"hi\n"
    client.close()
    assert run.worker_pids() == {0: pid}
    assert run.count(r"worker\[0\] cannot accept: Too many open files") == 1


def test_app_closing_inherited_fds_still_counts_as_ready(start, app_file, tmp_path):
    """os.closerange() in after_fork (daemon-style code) closes the worker's report
    pipe too: the master must still see it ready (its scoreboard), or READY=1 and
    every HUP would wait for it forever."""
    app = app_file("""
        import os, time
        def after_fork(worker):
            os.closerange(3, 1024)
        def worker_start(worker):
            time.sleep(0.05)
    """)
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    try:
        run = start("--app", str(app), "--workers", "2", env={"NOTIFY_SOCKET": notify_path})
        old = run.wait_ready(2)
        said = ""
        while "READY=1" not in said:
            said += notify.recv(4096).decode()
        run.signal(signal.SIGHUP)
        run.wait_log(r"reload done: 2 workers run the new app", 1, 10)
        new = run.wait_workers(2)
        assert not set(new.values()) & set(old.values())
    finally:
        notify.close()


def test_control_socket_flood_and_silent_clients(start, app_file, tmp_path):
    """Hundreds of connections that say nothing, and one that pipelines thousands
    of requests without reading a reply: the master's fds stay bounded, it keeps
    serving signals, and it is back to normal once the silent ones time out."""
    app = app_file(loop_app())
    control = str(tmp_path / "ctl.sock")
    run = start("--app", str(app), "--workers", "2", "--control", control)
    run.wait_ready(2)
    base = len(os.listdir(f"/proc/{run.pid}/fd"))
    greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    greedy.connect(control)
    greedy.setblocking(False)
    sent = 0
    try:
        while sent < 2_000_000:
            sent += greedy.send(b"status\n" * 1000)
    except BlockingIOError:
        pass  # the master stopped reading it: it answers only as fast as replies are read
    silent = []
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(control)
        except (BlockingIOError, TimeoutError):
            sock.close()  # the backlog is full: fine, that is the kernel's limit
            continue
        silent.append(sock)
    assert len(os.listdir(f"/proc/{run.pid}/fd")) <= base + 64 + 2
    run.signal(signal.SIGTTIN)  # the loop still runs
    run.wait_workers(3)
    for sock in silent:
        sock.close()
    greedy.close()
    wait_until(lambda: len(os.listdir(f"/proc/{run.pid}/fd")) == base, 10, "the fds back")
    done = subprocess.run(
        [str(BIN), "ctl", "--control", control, "status"], capture_output=True, timeout=20
    )
    assert done.returncode == 0, done
    assert sent > 7 * 1000  # it did get a pile of requests


@pytest.mark.parametrize("hook", ["before_fork", "before_exec"])
def test_master_hook_calling_sys_exit_does_not_end_the_master(start, app_file, hook):
    """User code that runs in the master (before_fork with --preload, before_exec on
    USR2) calling sys.exit() is an error in that hook, not a way out of the master."""
    app = app_file(f"""
        import sys, time
        def {hook}(arg):
            sys.exit("bye from {hook}")
        def worker_start(worker):
            time.sleep(0.05)
    """)
    run = start("--app", str(app), "--workers", "2", "--preload")
    run.wait_ready(2)
    if hook == "before_exec":
        run.signal(signal.SIGUSR2)
        run.wait_log(r"master process ready", 2, 15)
    else:
        os.kill(run.worker_pids()[0], signal.SIGKILL)
    run.wait_log(rf"{hook} failed", 1, 10)
    assert "SystemExit: bye from" in run.log()
    assert alive(run.pid)
    run.wait_workers(2)


def test_worker_exiting_0_right_away_is_a_loop_too(start, app_file):
    """An app whose worker_start calls sys.exit(0) at once, every time: without a
    backoff the master would fork as fast as it can (~80 workers a second here).
    A --max-tasks recycle is asked for, and is not slowed down."""
    app = app_file("""
        import sys
        def worker_start(worker):
            sys.exit(0)
    """)
    run = start("--app", str(app), "--workers", "2")
    run.wait_log(r"exited soon after spawning \(\d+ times in a row\): crash loop", 1, 5)
    began = time.monotonic()
    first = run.count(r"spawned pid=")
    wait_until(lambda: time.monotonic() - began >= 2, 3, "two seconds")
    assert run.count(r"spawned pid=") - first < 20
    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0


def test_max_tasks_recycling_is_not_taken_for_a_crash_loop(start, app_file):
    app = app_file("""
        def worker_start(worker):
            pass
    """)
    run = start("--app", str(app), "--workers", "2", "--max-tasks", "3")
    run.wait_log(r"recycled after \d+ tasks", 20, 10)
    assert "crash loop" not in run.log()
