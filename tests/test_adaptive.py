"""--workers MIN:MAX under a real load (issue 16).

The load is connections to the master's unix listener: each one that a worker
accepts keeps that worker busy until the test closes it, and the ones no
worker has taken yet wait in the listen queue, as queued work does.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import cpu_seconds, run_cli, wait_until

# A task holds its worker until the client closes the connection (or QUIT).
HOLD_APP = """
def worker_start(worker):
    got = worker.accept()
    if got is None:
        return
    conn, _address = got
    with conn:
        conn.settimeout(0.2)
        while worker.alive:
            try:
                if not conn.recv(1):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
"""


class Load:
    """Connections to the listener: each one a task, held as long as the test likes."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.socks: list[socket.socket] = []

    def add(self, n: int) -> None:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)  # queued at once: the backlog is 1024
            self.socks.append(sock)

    def drop(self, n: int) -> None:
        for _ in range(min(n, len(self.socks))):
            self.socks.pop().close()

    def close(self) -> None:
        self.drop(len(self.socks))


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[[], Load]]:
    loads: list[Load] = []

    def _make() -> Load:
        loads.append(Load(tmp_path / "app.sock"))
        return loads[-1]

    yield _make
    for one in loads:
        one.close()


def status(control: Path) -> dict:
    """The master's part of `status` over the control socket (no process per call)."""
    return full_status(control)["master"]


def full_status(control: Path) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(control))
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the master closed the control connection"
            data += chunk
    reply = json.loads(data)
    assert reply["ok"], reply
    return reply


def start_adaptive(start, app_file, tmp_path: Path, workers: str, *extra: str):
    app = app_file(HOLD_APP)
    control = tmp_path / "ctl.sock"
    run = start(
        "--app", str(app), "--workers", workers, "--listen", f"unix:{tmp_path / 'app.sock'}",
        "--control", str(control), *extra,
    )  # fmt: skip
    run.wait_log("master process ready")
    return run, control


class Watch:
    """Samples the master's status, checking each sample, and keeps the
    (time, workers_wanted) changes it saw."""

    def __init__(self, control: Path, check: Callable[[dict], None] = lambda m: None) -> None:
        self.control = control
        self.check = check
        self.changes: list[tuple[float, int]] = []

    def sample(self) -> dict:
        master = status(self.control)
        self.check(master)
        if not self.changes or self.changes[-1][1] != master["workers_wanted"]:
            self.changes.append((time.monotonic(), master["workers_wanted"]))
        return master

    def until(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> None:
        wait_until(lambda: predicate(self.sample()), timeout, what)

    def during(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.until(lambda m: time.monotonic() >= end, seconds + 10, f"{seconds}s of samples")


def watch(control: Path, seconds: float, check: Callable[[dict], None]) -> list[tuple[float, int]]:
    """Sample status for `seconds`, checking each sample; the (time, wanted) changes seen."""
    watcher = Watch(control, check)
    watcher.during(seconds)
    return watcher.changes


def scale_lines(run, kind: str = "scale (up|down)") -> int:
    return run.count(rf"\] {kind}: ")


def test_ramps_up_to_max_and_back_to_min_after_the_delay(start, app_file, tmp_path, load):
    run, control = start_adaptive(
        start, app_file, tmp_path, "1:4", "--idle-workers", "1", "--scale-down-after", "1"
    )
    run.wait_ready(1)
    wait_until(lambda: status(control)["workers_idle"] == 1, 10, "1 idle worker")
    master = status(control)
    assert (master["workers_min"], master["workers_max"], master["workers_wanted"]) == (1, 4, 1)
    run.wait_log(r"adaptive worker count 1:4: keeping 1 idle")

    work = load()
    began = time.monotonic()
    work.add(6)  # more than MAX: 2 stay queued

    def all_busy_at_max() -> bool:
        assert len(run.workers()) <= 4
        m = status(control)
        assert m["workers_wanted"] <= 4
        return m["workers_wanted"] == 4 and m["workers_running"] == 4 and m["workers_idle"] == 0

    wait_until(all_busy_at_max, 8, "4 busy workers")
    ramp = time.monotonic() - began
    print(f"ramp 1 -> 4 workers: {ramp:.2f}s")
    assert re.search(r"scale up: 0 of 1 idle \(want 1 idle\): \d workers wanted", run.log())

    # Busy for longer than --scale-down-after: nothing is retired.
    def held(m: dict) -> None:
        assert m["workers_wanted"] == 4 and len(run.workers()) <= 4

    watch(control, 1.5, held)
    assert scale_lines(run, "scale down") == 0

    released = time.monotonic()
    work.close()
    watcher = Watch(control)
    watcher.until(lambda m: m["workers_wanted"] == 1, 15, "back to 1 worker")
    changes = watcher.changes
    drops = [(t, n) for t, n in changes if n < 4]
    assert [n for _t, n in drops] == [3, 2, 1], changes
    # Not before the delay, and one retirement per delay (seen through polling, so
    # each time is a little late: the gaps are checked with a margin).
    assert drops[0][0] - released >= 1.0, (released, drops)
    gaps = [b[0] - a[0] for a, b in zip(drops, drops[1:], strict=False)]
    assert all(gap >= 0.5 for gap in gaps), gaps
    print(f"back to MIN: {drops[-1][0] - released:.2f}s after the load ended; gaps {gaps}")
    assert scale_lines(run, "scale down") == 3
    run.wait_log(r"scale down: \d of \d idle for 1s \(want 1 idle\): 1 workers wanted")
    run.wait_workers(1)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


def test_steady_load_near_a_threshold_does_not_swing_the_count(start, app_file, tmp_path, load):
    period = 1.0
    run, control = start_adaptive(
        start, app_file, tmp_path, "1:6", "--scale-down-after", str(period)
    )
    run.wait_ready(1)
    steady, flapping = load(), load()
    steady.add(2)
    stop = threading.Event()
    rng = random.Random(16)

    def flap() -> None:
        # A third task comes and goes, several times per period, at random
        # moments (no rhythm the master's looks could fall in step with).
        while not stop.is_set():
            flapping.add(1)
            stop.wait(rng.uniform(0.05, 0.25))
            flapping.drop(1)
            stop.wait(rng.uniform(0.05, 0.25))

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    try:
        wait_until(lambda: status(control)["workers_wanted"] >= 3, 10, "the load is met")
        watch(control, 2 * period, lambda m: None)  # settle
        before = scale_lines(run)
        window = 5.0
        changes = watch(control, window, lambda m: None)
        changed = scale_lines(run) - before
        down = len(re.findall(r"scale down", run.log()))
        print(f"steady load: {changed} changes in {window:g}s; samples {changes}")
        # At most one change per period, and in practice none.
        assert changed <= window / period, run.log()[-3000:]
        assert down <= run.count("scale up") and len(changes) - 1 <= window / period
    finally:
        stop.set()
        flapper.join(5)
    run.signal(signal.SIGQUIT)
    steady.close()
    assert run.wait_exit(10) == 0


def test_bounds_hold_under_random_worker_kills(start, app_file, tmp_path, load):
    run, control = start_adaptive(
        start, app_file, tmp_path, "2:4", "--scale-down-after", "1", "--graceful-timeout", "5"
    )
    run.wait_ready(2)
    work = load()
    work.add(20)  # each kill ends one task; the queue refills the slot
    wait_until(lambda: status(control)["workers_wanted"] == 4, 10, "4 workers wanted")
    rng = random.Random(11)
    kills = 0
    seen_wanted: set[int] = set()

    def bounded(m: dict) -> None:
        seen_wanted.add(m["workers_wanted"])
        assert 2 <= m["workers_wanted"] <= 4, m
        assert m["workers_min"] == 2 and m["workers_max"] == 4
        assert len(run.workers()) <= 4

    until = time.monotonic() + 3.0

    def kill_some() -> bool:
        nonlocal kills
        now = full_status(control)
        bounded(now["master"])
        # Ready ones only: a worker killed while booting counts as a crash.
        pids = [w["pid"] for w in now["workers"] if w["state"] != "booting"]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        watch(control, rng.uniform(0.1, 0.3), bounded)
        return time.monotonic() >= until

    wait_until(kill_some, 15, "3 s of kills")
    assert kills >= 5
    assert "crash loop" not in run.log()  # SIGKILL from outside is not a crash
    wait_until(lambda: len(run.worker_pids()) == 4, 10, "4 workers again")
    work.close()
    wait_until(lambda: status(control)["workers_wanted"] == 2, 15, "back to MIN")
    watch(control, 0.5, bounded)
    print(f"{kills} kills; counts wanted seen: {sorted(seen_wanted)}")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


def test_ttin_ttou_scale_and_hup(start, app_file, tmp_path, load):
    conf = tmp_path / "conf.py"
    conf.write_text('workers = "1:3"\nscale_down_after = 1\n')
    control = tmp_path / "ctl.sock"
    run = start(
        "--app", str(app_file(HOLD_APP)), "-c", str(conf),
        "--listen", f"unix:{tmp_path / 'app.sock'}", "--control", str(control),
    )  # fmt: skip
    run.wait_ready(1)

    def bounds() -> tuple[int, int, int]:
        m = status(control)
        return m["workers_min"], m["workers_max"], m["workers_wanted"]

    assert bounds() == (1, 3, 1)
    run.signal(signal.SIGTTIN)
    wait_until(lambda: bounds() == (2, 4, 2), 5, "TTIN moves both bounds")
    run.wait_log(r"TTIN: 2 workers wanted \(workers 2:4\)")
    run.signal(signal.SIGTTOU)
    wait_until(lambda: bounds() == (1, 3, 1), 5, "TTOU moves both back")
    # ctl ttou as TTOU: MIN stays at 0; 0 workers, but 1 idle is wanted: 1.
    result = run_cli("ctl", "--control", str(control), "ttou")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: bounds() == (0, 2, 1), 5, "0:2 with one idle worker")

    # An exact count turns the adaptive count off, until HUP.
    result = run_cli("ctl", "--control", str(control), "scale", "3")
    assert json.loads(result.stdout) == {"ok": True, "workers_wanted": 3}
    run.wait_log(r"control scale 3: 3 workers wanted \(a fixed count until HUP\)")
    assert bounds() == (3, 3, 3)
    ups = scale_lines(run, "scale up")
    work = load()
    work.add(5)
    run.wait_workers(3)
    watch(control, 1.5, lambda m: None)
    assert bounds() == (3, 3, 3) and scale_lines(run, "scale up") == ups

    # HUP reads the bounds again and keeps the current count between them.
    conf.write_text('workers = "2:5"\nscale_down_after = 1\n')
    run.signal(signal.SIGHUP)
    run.wait_log("reload done: 3 workers run the new app")
    run.wait_log(r"adaptive worker count 2:5")
    assert bounds()[:2] == (2, 5)
    # The old workers were asked to stop, so they ended their tasks: new load.
    work.close()
    work.add(5)
    wait_until(lambda: bounds() == (2, 5, 5), 10, "5 workers for 5 tasks")
    work.close()
    wait_until(lambda: bounds()[2] == 2, 15, "back to MIN after the load")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


QUEUE_APP = """
import os, select, time
FIFO = {fifo!r}
DONE = {done!r}
fd = -1

def after_fork(worker):
    global fd
    fd = os.open(FIFO, os.O_RDWR | os.O_NONBLOCK)   # RDWR: never an EOF

def worker_start(worker):
    with worker.idle():                 # waiting for a job is not being busy
        ready, _, _ = select.select([fd], [], [], 0.5)
    if not ready:
        return
    try:
        os.read(fd, 1)
    except BlockingIOError:
        return                          # another worker took it
    while worker.alive and not os.path.exists(DONE):
        time.sleep(0.05)                # the job: until the test says it is done
"""


def test_a_queue_consumer_is_idle_in_worker_idle(start, app_file, tmp_path):
    fifo, done = tmp_path / "jobs", tmp_path / "done"
    os.mkfifo(fifo)
    app = app_file(QUEUE_APP.format(fifo=str(fifo), done=str(done)))
    control = tmp_path / "ctl.sock"
    run = start(
        "--app", str(app), "--workers", "1:3", "--scale-down-after", "1",
        "--control", str(control), "--timeout", "2",
    )  # fmt: skip
    run.wait_ready(1)
    wait_until(lambda: status(control)["workers_idle"] == 1, 10, "the consumer idle")
    jobs = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(jobs, b"jjjj")
        wait_until(lambda: status(control)["workers_wanted"] == 3, 10, "3 consumers")
    finally:
        os.close(jobs)
    done.write_text("")
    wait_until(lambda: status(control)["workers_wanted"] == 1, 15, "back to 1")
    # Idle time is not task time: an idle consumer is never timed out.
    assert "timed out" not in run.log()
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


# -- bad input, and the idle master -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "4:2"], "argument --workers: MIN:MAX needs MIN <= MAX, got '4:2'"),
        (["--workers", "1:10001"], "argument --workers: must be at most 10000, got '1:10001'"),
        (["--workers", "1:x"], "argument --workers: must be a whole number >= 0, 'auto' or"),
        (["--workers", "1:2", "--idle-workers", "0"], "argument --idle-workers: must be a"),
        (["--workers", "1:2", "--scale-down-after", "0"], "argument --scale-down-after: must"),
    ],
)
def test_bad_bounds_are_one_line_and_exit_2(app_file, args, message):
    app = app_file(HOLD_APP)
    result = run_cli("--app", str(app), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"unicornish: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_bad_bounds_in_a_config_file_exit_1(app_file, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text('workers = "3:1"\n')
    result = run_cli("--app", str(app_file(HOLD_APP)), "-c", str(conf))
    assert result.returncode == 1
    assert result.stderr == (
        f"unicornish: error: config file {conf}: workers MIN:MAX needs MIN <= MAX, got '3:1'\n"
    )


def switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_adaptive_master_wakes_about_once_a_second(start, app_file, tmp_path):
    run, control = start_adaptive(start, app_file, tmp_path, "1:4")
    run.wait_ready(1)
    wait_until(lambda: status(control)["workers_idle"] == 1, 10, "1 idle worker")
    window = 4.0
    wakes, cpu, began = switches(run.pid), cpu_seconds(run.pid), time.monotonic()
    until = began + window
    wait_until(lambda: time.monotonic() >= until, window + 2, f"{window}s to pass")
    elapsed = time.monotonic() - began
    wakes, cpu = switches(run.pid) - wakes, cpu_seconds(run.pid) - cpu
    print(f"idle adaptive master: {wakes} wake-ups, {cpu * 1000:.0f} ms CPU in {elapsed:.1f}s")
    assert wakes <= elapsed + 2  # IDLE_LOOK = 1 s
    assert cpu / elapsed <= 0.05
