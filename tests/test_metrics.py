"""--metrics for real: a real Prometheus scrapes the master, promtool checks the
output, /readyz follows a graceful stop, slow and oversized clients cannot
hold the master up, and the idle master does not wake between scrapes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, gone, http, loop_app, run_cli, samples, wait_until

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="prometheus and promtool are not installed (make check installs them)",
)


def sample(text: str, name: str) -> float | None:
    """The value of an unlabelled sample."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def ready_metrics(start, app_file, *extra: str, workers: int = 2, app: str = ""):
    port = free_port()
    run = start(
        "--app",
        str(app_file(app or loop_app())),
        "--workers",
        str(workers),
        "--metrics",
        f"127.0.0.1:{port}",
        *extra,
    )
    run.wait_ready(workers)
    return run, port


# -- a real Prometheus -----------------------------------------------------------------


class Prometheus:
    def __init__(self, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: unicornish\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                data = json.load(reply)
        except OSError:
            return []
        return data["data"]["result"] if data.get("status") == "success" else []

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator:
    started: list[Prometheus] = []

    def _start(target_port: int) -> Prometheus:
        server = Prometheus(tmp_path, target_port)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@needs_prometheus
def test_prometheus_sees_the_workers_across_a_sigkill(start, app_file, prometheus):
    run, port = ready_metrics(start, app_file, workers=3)
    prom = prometheus(port)
    wait_until(
        lambda: prom.value("unicornish_workers_running") == 3.0,
        30,
        "Prometheus to read unicornish_workers_running 3",
    )
    wait_until(lambda: prom.value('up{job="unicornish"}') == 1.0, 10, "the target up")
    tasks_expr = 'unicornish_worker_tasks_completed_total{nr="0"}'
    before = wait_until(lambda: prom.value(f"{tasks_expr} > 0"), 10, "a task count for slot 0")
    victim = run.worker_pids()[0]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    run.wait_log(r"worker\[0\] spawned pid=", 2)
    run.wait_workers(3)
    # A scrape after the replacement: still 3 running, and slot 0's count went on
    # from where the dead worker left it (the replacement started from 0).
    wait_until(
        lambda: (
            prom.value(f"timestamp(unicornish_workers_running) > {killed_at + 1}") is not None
            and prom.value("unicornish_workers_running") == 3.0
        ),
        20,
        "a scrape after the SIGKILL with 3 workers running",
    )
    after = prom.value(tasks_expr)
    assert after is not None and after >= before  # type: ignore[operator]
    assert prom.value(f"resets({tasks_expr}[5m])") == 0.0
    assert prom.value("unicornish_workers_wanted") == 3.0


@needs_prometheus
def test_promtool_accepts_the_output(start, app_file, tmp_path: Path):
    run, port = ready_metrics(start, app_file, "--listen", "127.0.0.1:0")
    status, text = http(port, "/metrics")
    assert status == 200
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in (
        "unicornish_build_info",
        "unicornish_master_start_time_seconds",
        "unicornish_workers_wanted",
        "unicornish_workers_busy",
        "unicornish_workers_idle",
        "unicornish_workers_booting",
        "unicornish_spares",
        "unicornish_crash_backoff_slots",
        "unicornish_worker_tasks_completed_total",
        "unicornish_reloads_total",
        "unicornish_upgrades_total",
        "unicornish_worker_memory_rss_bytes",
        "unicornish_worker_memory_uss_bytes",
        "unicornish_worker_memory_pss_bytes",
        "unicornish_listener_accept_queue",
        "unicornish_listener_accept_queue_limit",
    ):
        assert f"\n# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name} " in text, name
    assert sample(text, "unicornish_workers_running") == 2.0


def test_openmetrics_when_asked_for(start, app_file):
    run, port = ready_metrics(start, app_file)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"GET /metrics HTTP/1.0\r\n"
            b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        )
        data = bytearray()
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert b"Content-Type: application/openmetrics-text; version=1.0.0" in head
    assert body.endswith(b"# EOF\n")
    assert b"unicornish_workers_running 2.0" in body


# -- the task duration histogram ------------------------------------------------------------

# Every 5th task takes 20 ms, the others 1 ms. Worker 0 parks in the middle of a
# task while the file `park` exists (and says so with `parked-PID`): a SIGKILL
# then lands at a known point, between two tasks' bookkeeping, never inside it.
DURATIONS_APP = """
import os, time
from unicornish.metrics import appmetrics

JOBS = appmetrics.counter("jobs", "Tasks the app finished")
SLOW = appmetrics.counter("slow_jobs", "Tasks of 20 ms")
HERE = os.path.dirname(os.path.abspath(__file__))
n = [0]

def worker_start(worker):
    park = os.path.join(HERE, "park")
    if worker.nr == 0 and os.path.exists(park):
        open(os.path.join(HERE, f"parked-{os.getpid()}"), "w").close()
        while os.path.exists(park):
            time.sleep(0.01)
    n[0] += 1
    if n[0] % 5 == 0:
        time.sleep(0.02)
        SLOW.inc()
    else:
        time.sleep(0.001)
    JOBS.inc()
"""


def test_task_durations_count_every_task_across_a_sigkill(start, app_file, tmp_path: Path):
    control = str(tmp_path / "ctl.sock")
    run, port = ready_metrics(start, app_file, "--control", control, app=DURATIONS_APP)

    def scrape() -> dict[str, float]:
        status, text = http(port, "/metrics")
        assert status == 200
        return samples(text)

    count = "unicornish_task_duration_seconds_count"
    wait_until(lambda: scrape()[count] >= 20, 10, "20 tasks done")
    park = tmp_path / "park"
    park.touch()
    parked = wait_until(lambda: list(tmp_path.glob("parked-*")), 10, "worker 0 parked")
    victim = int(parked[0].name.split("-")[1])  # type: ignore[index]
    before = scrape()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone(victim), 10, "the parked worker gone")
    park.unlink()
    run.wait_log(f"reaped pid={victim} ")
    run.wait_ready(2)
    wait_until(lambda: scrape()[count] >= before[count] + 20, 10, "20 more tasks")
    # Stop every worker (each finishes its task): the figures stop moving, and
    # every task is in the reaped totals.
    assert run_cli("ctl", "--control", control, "scale", "0").returncode == 0
    wait_until(lambda: not run.workers(), 10, "every worker gone")
    wait_until(lambda: scrape()["unicornish_workers_running"] == 0, 10, "0 running")
    after = scrape()
    tasks = sum(v for k, v in after.items() if k.startswith("unicornish_worker_tasks_completed"))
    assert after[count] == tasks == after["jobs_total"]
    assert after[count] > before[count] >= 20
    buckets = [v for k, v in after.items() if k.startswith(count.replace("_count", "_bucket{"))]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == after[count]  # le="+Inf"
    over_10ms = after[count] - after['unicornish_task_duration_seconds_bucket{le="0.01"}']
    assert over_10ms >= after["slow_jobs_total"] > 0
    # 20 ms per slow task at least, 1 ms per other one: the sum is in seconds.
    least = 0.02 * after["slow_jobs_total"] + 0.001 * (after[count] - after["slow_jobs_total"])
    assert least <= after["unicornish_task_duration_seconds_sum"] < least + after[count]


def test_reloads_are_counted(start, app_file):
    run, port = ready_metrics(start, app_file)
    run.signal(signal.SIGHUP)
    run.wait_log("reload done")
    _, text = http(port, "/metrics")
    assert 'unicornish_reloads_total{result="done"} 1.0' in text
    assert 'unicornish_reloads_total{result="failed"} 0.0' in text


def test_ctl_metrics_prints_the_same_text(start, app_file, tmp_path: Path):
    control = str(tmp_path / "ctl.sock")
    run, port = ready_metrics(start, app_file, "--control", control)
    result = run_cli("ctl", "--control", control, "metrics")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# HELP unicornish_build_info")
    assert sample(result.stdout, "unicornish_workers_running") == 2.0
    status, text = http(port, "/metrics")
    names = lambda t: [line for line in t.splitlines() if line.startswith("# TYPE")]  # noqa: E731
    assert names(result.stdout) == names(text)


def test_ctl_metrics_without_the_option(start, app_file, tmp_path: Path):
    control = str(tmp_path / "ctl.sock")
    run = start("--app", str(app_file(loop_app())), "--control", control)
    run.wait_ready(1)
    result = run_cli("ctl", "--control", control, "metrics")
    assert result.returncode == 0, result.stderr
    assert sample(result.stdout, "unicornish_workers_running") == 1.0


# -- readiness ------------------------------------------------------------------------------


def test_readyz_flips_to_503_during_a_graceful_stop(start, app_file):
    app = """
    import time
    def worker_start(worker):
        print("task start", flush=True)
        time.sleep(4)
    """
    run, port = ready_metrics(start, app_file, workers=1, app=app)
    wait_until(lambda: http(port, "/readyz") == (200, "ready\n"), 10, "/readyz 200")
    wait_until(lambda: "task start" in run.stdout(), 10, "a task under way")
    run.signal(signal.SIGQUIT)
    run.wait_log("QUIT received")
    status, body = http(port, "/readyz")
    assert (status, body) == (503, "not ready: stopping\n")
    assert http(port, "/healthz") == (200, "ok\n")  # alive, finishing its task
    assert run.wait_exit(15) == 0


def test_readyz_says_why_while_workers_boot(start, app_file, tmp_path: Path):
    app = """
    import time
    def after_fork(worker):
        time.sleep(3)
    def worker_start(worker):
        time.sleep(0.05)
    """
    port = free_port()
    run = start("--app", str(app_file(app)), "--workers", "2", "--metrics", f"127.0.0.1:{port}")
    run.wait_log("master process ready")
    status, body = wait_until(lambda: _answer(port, "/readyz"), 10, "/readyz to answer")
    assert (status, body) == (503, "not ready: booting: 0 of 2 ready\n")
    wait_until(lambda: _answer(port, "/readyz") == (200, "ready\n"), 15, "/readyz 200")


def _answer(port: int, path: str) -> tuple[int, str] | None:
    try:
        return http(port, path)
    except OSError:
        return None


# -- clients that misbehave --------------------------------------------------------------------


def test_a_silent_client_does_not_delay_another(start, app_file):
    run, port = ready_metrics(start, app_file)
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        began = time.monotonic()
        assert http(port, "/healthz", timeout=2) == (200, "ok\n")
        assert time.monotonic() - began < 1.0
        status, text = http(port, "/metrics", timeout=2)
        assert status == 200 and "unicornish_workers_running" in text
        # The silent one is dropped at its deadline (5 s), with nothing sent.
        silent.settimeout(10)
        assert silent.recv(100) == b""
        assert time.monotonic() - began < 8
    finally:
        silent.close()


def test_an_oversized_request_is_refused(start, app_file):
    run, port = ready_metrics(start, app_file)
    huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    status, body = http(port, "", raw=huge)
    assert status == 431 and "8192" in body
    assert http(port, "/healthz") == (200, "ok\n")  # and the master serves on


def test_wrong_paths_and_methods(start, app_file):
    run, port = ready_metrics(start, app_file)
    assert http(port, "/")[0] == 404
    assert http(port, "", raw=b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab")[0] == 405
    assert http(port, "", raw=b"GARBAGE\r\n\r\n")[0] == 400


def client_fds(pid: int) -> int:
    return sum(1 for fd in os.listdir(f"/proc/{pid}/fd"))


def test_past_the_client_limit_the_one_waiting_longest_gives_its_slot_up(start, app_file):
    """With 64 connections open and silent, a probe is answered at once: the
    connection that waited longest for its request is closed to make room
    (they used to keep every new connection waiting in the backlog for up to 5 s)."""
    run, port = ready_metrics(start, app_file)
    before = client_fds(run.pid)
    silent: list[socket.socket] = []
    try:
        for _ in range(64):
            silent.append(socket.create_connection(("127.0.0.1", port)))
        wait_until(lambda: client_fds(run.pid) >= before + 64, 10, "64 clients accepted")
        for _ in range(3):
            began = time.monotonic()
            assert http(port, "/healthz", timeout=2) == (200, "ok\n")
            assert time.monotonic() - began < 0.5
        run.wait_log("metrics: 64 connections open; closing the one that waited longest", 1, 5)
        # The first one connected gave its slot up, with nothing sent; the probe
        # was done at once, so the next probes found a free slot.
        silent[0].settimeout(5)
        assert silent[0].recv(100) == b""
        silent[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            silent[1].recv(100)  # still waiting for its request, still served
        silent[1].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        silent[1].settimeout(5)
        assert silent[1].recv(100).startswith(b"HTTP/1.1 200 OK")
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: _answer(port, "/healthz") == (200, "ok\n"), 10, "/healthz 200 again")


class Slowloris:
    """`count` connections that each send one more byte of a request head every
    `every` seconds, and connect again when the master closes them."""

    HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000

    def __init__(self, port: int, count: int, every: float) -> None:
        self.port, self.count, self.every = port, count, every
        self.socks: list[tuple[socket.socket, int]] = []
        self.reconnects = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self) -> tuple[socket.socket, int]:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        return sock, 0

    def run(self) -> None:
        self.socks = [self.connect() for _ in range(self.count)]
        while not self.done.is_set():
            for i, (sock, sent) in enumerate(self.socks):
                try:
                    sock.send(self.HEAD[sent : sent + 1])
                    self.socks[i] = (sock, sent + 1)
                except BlockingIOError:
                    pass  # still connecting
                except OSError:  # closed by the master: come back
                    sock.close()
                    self.socks[i] = self.connect()
                    self.reconnects += 1
            self.done.wait(self.every)

    def __enter__(self) -> Slowloris:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)
        for sock, _sent in self.socks:
            sock.close()


def test_slow_clients_do_not_starve_the_probes(start, app_file):
    """300 connections sending their request head a byte every 2 s once made
    /healthz wait 12 s (64 slots, 5 s each): a liveness probe would restart a
    healthy pod. Every probe is answered within 100 ms."""
    run, port = ready_metrics(start, app_file)
    with Slowloris(port, 300, 2.0):
        run.wait_log("metrics: 64 connections open", 1, 10)
        for path, expected in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)] * 5:
            began = time.monotonic()
            status, _body = http(port, path, timeout=5)
            took = time.monotonic() - began
            assert status == expected and took < 0.1, (path, status, took)
    assert http(port, "/healthz") == (200, "ok\n")


# -- the idle master -----------------------------------------------------------------------------


def context_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_the_idle_master_does_not_wake_between_scrapes(start, app_file):
    # Workers that never finish a task: nothing but a scrape could wake the master.
    app = """
    import time
    def worker_start(worker):
        while worker.alive:
            time.sleep(1)
    """
    run, port = ready_metrics(start, app_file, "--listen", "127.0.0.1:0", app=app)
    http(port, "/metrics")
    http(port, "/metrics")  # served and closed: no client, so no deadline left
    # Once it is back in epoll_wait (its count stops moving), a master that is
    # never woken switches context 0 times.
    seen = [context_switches(run.pid)]

    def settled() -> bool:
        seen.append(context_switches(run.pid))
        return len(seen) > 5 and seen[-1] == seen[-6]

    wait_until(settled, 10, "the master to go back to sleep")
    before = context_switches(run.pid)
    until = time.monotonic() + 3
    wait_until(lambda: time.monotonic() >= until, 5, "3 s to pass")
    assert context_switches(run.pid) == before, "the master woke up with no client connected"


# -- app metrics: one bad value must never cost the scrape ---------------------------------------

REFUSING_APP = """
import os, time
from unicornish.metrics import appmetrics

DONE = appmetrics.counter("done", "Tasks done")
FILE = os.fsdecode(b"report-\\xff.csv")  # a file name that is not UTF-8

def after_fork(worker):
    try:
        worker.metrics.counter("files", "Files", labels={"file": [FILE]})
    except appmetrics.MetricsError as exc:
        print("refused:", exc, flush=True)

def worker_start(worker):
    DONE.inc()
    time.sleep(0.05)
"""


def test_a_label_value_that_is_not_text_is_refused_and_the_scrape_goes_on(
    start, app_file, tmp_path: Path
):
    control = str(tmp_path / "ctl.sock")
    run, port = ready_metrics(start, app_file, "--control", control, app=REFUSING_APP)
    wait_until(lambda: run.stdout().count("refused:") == 2, 10, "both workers refused")
    assert "label 'file': value 'report-\\udcff.csv' is not valid text" in run.stdout()
    status, text = http(port, "/metrics")
    assert status == 200, text  # it was 500 for every scrape
    assert (sample(text, "done_total") or 0) > 0
    result = run_cli("ctl", "--control", control, "metrics")
    assert result.returncode == 0, result.stderr
    assert "done_total" in result.stdout


# Worker 0 writes records into its own arena, as any app can: the master must
# take what it reads there as untrusted input.
SCRIBBLING_APP = """
import json, time
from unicornish.metrics import appmetrics

GOOD = appmetrics.counter("good", "Good")
RECORD = {record!r}

def after_fork(worker):
    if worker.nr == 0:
        line = json.dumps(RECORD).encode() + b"\\n"
        appmetrics.REGISTRY._arena.append(line, 2)

def worker_start(worker):
    GOOD.inc()
    time.sleep(0.05)
"""

SCRIBBLED = {
    "the master's name": {"n": "unicornish_workers_running", "t": "gauge", "l": [], "s": [[]]},
    "__name__ label": {"n": "x", "t": "gauge", "l": ["__name__"], "s": [["y"]]},
    "a lone surrogate": {"n": "x", "t": "gauge", "l": ["f"], "s": [["report-\udcff.csv"]]},
}


@pytest.mark.parametrize("record", SCRIBBLED.values(), ids=SCRIBBLED.keys())
def test_a_scribbled_arena_costs_that_workers_series_not_the_scrape(start, app_file, record: dict):
    record = {"h": "", "b": [], "o": 1, **record}
    run, port = ready_metrics(start, app_file, app=SCRIBBLING_APP.format(record=record))
    victim = run.worker_pids()[0]
    wait_until(lambda: (sample(http(port, "/metrics")[1], "good_total") or 0) > 0, 10, "a task")
    status, text = http(port, "/metrics")
    assert status == 200, text
    assert text.count("# TYPE unicornish_workers_running gauge") == 1
    assert sample(text, "unicornish_workers_running") == 2.0
    assert "__name__" not in text and "report-" not in text
    dropped = samples(text)['unicornish_metrics_dropped_series_total{reason="bad_arena"}']
    assert dropped >= 2  # one series of worker 0's, at this scrape and the one before
    run.wait_log(rf"app metrics: worker\[0\] pid={victim}: its metrics memory breaks a rule")
    assert run.count("breaks a rule") == 1
    if shutil.which("promtool"):
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    raw = b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n"
    status, text = http(port, "", raw=raw)
    assert status == 200
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    names = [f.name for f in parser.text_string_to_metric_families(text)]
    assert len(names) == len(set(names)) and "good" in names


TWO_TYPES_APP = """
import time

def after_fork(worker):
    if worker.nr == 0:
        worker.metrics.counter("x", "X").inc()
    else:
        worker.metrics.gauge("x", "X").set(1)

def worker_start(worker):
    time.sleep(0.05)
"""


def test_a_name_with_two_types_keeps_the_lowest_slots_as_workers_are_replaced(start, app_file):
    run, port = ready_metrics(start, app_file, app=TWO_TYPES_APP)

    def types() -> list[str]:
        status, text = http(port, "/metrics")
        assert status == 200
        return [line for line in text.splitlines() if line.startswith("# TYPE x")]

    assert types() == ["# TYPE x_total counter"]
    victim = run.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    run.wait_log(rf"reaped pid={victim} ")
    run.wait_log(r"worker\[0\] ready", 2)
    # The replacement of slot 0 now comes after slot 1 in the master's table: the
    # gauge used to be served from then on.
    assert types() == ["# TYPE x_total counter"]
    assert (
        run.count(r"app metrics: gauge x\[\] \(declared by worker\[1\] pid=\d+\) is left out") == 1
    )


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, message",
    [
        ("nohost", "--metrics 'nohost': expected HOST:PORT"),
        ("127.0.0.1:99999", "--metrics '127.0.0.1:99999': port must be 0..65535"),
        ("unix:", "--metrics 'unix:': unix: needs a path"),
    ],
)
def test_a_bad_address_is_a_usage_error(app_file, address: str, message: str):
    result = run_cli("--app", str(app_file(loop_app())), "--metrics", address)
    assert result.returncode == 2
    assert result.stderr.startswith(f"unicornish: error: {message}")
    assert len(result.stderr.splitlines()) == 1


def test_a_busy_port_stops_the_start(app_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("--app", str(app_file(loop_app())), "--metrics", f"127.0.0.1:{port}")
    assert result.returncode == 1
    expected = f"unicornish: error: --metrics 127.0.0.1:{port}: address already in use\n"
    assert result.stderr == expected


def test_metrics_need_no_prometheus_client(start, app_file, tmp_path: Path):
    # The master writes every family itself: a prometheus_client that cannot be
    # imported changes nothing (it used to stop the start, asking to install it).
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    port = free_port()
    run = start(
        "--app",
        str(app_file(loop_app())),
        "--metrics",
        f"127.0.0.1:{port}",
        env={"PYTHONPATH": str(shadow.parent)},
    )
    run.wait_ready(1)
    status, text = http(port, "/metrics")
    assert status == 200 and sample(text, "unicornish_workers_running") == 1.0
    assert 'unicornish_worker_exits_total{cause="crash"} 0.0' in text
    raw = b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n"
    status, text = http(port, "", raw=raw)
    assert status == 200 and text.endswith("# EOF\n")


def test_a_unix_socket_serves_and_is_removed_at_exit(start, app_file, tmp_path: Path):
    path = tmp_path / "metrics.sock"
    run = start("--app", str(app_file(loop_app())), "--metrics", f"unix:{path}")
    run.wait_ready(1)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.0 200 OK")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    assert not path.exists()


# -- USR2 ------------------------------------------------------------------------------------


def test_usr2_hands_the_port_to_the_new_master(start, app_file, tmp_path: Path):
    pid_file = tmp_path / "app.pid"
    run, port = ready_metrics(start, app_file, "--pid", str(pid_file), workers=1)
    old_start = sample(http(port, "/metrics")[1], "unicornish_master_start_time_seconds")
    run.signal(signal.SIGUSR2)
    run.wait_log("old master pid=.* still runs", timeout=20)
    new_pid = int(pid_file.read_text())
    assert new_pid != run.pid
    # The new master answers on the same port (it was never closed, never busy).
    _, text = http(port, "/metrics")
    assert sample(text, "unicornish_master_start_time_seconds") != old_start
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(15) == 0
    try:
        assert http(port, "/healthz") == (200, "ok\n")
        _, text = http(port, "/metrics")
        assert sample(text, "unicornish_workers_running") == 1.0
    finally:
        os.kill(new_pid, signal.SIGQUIT)
        wait_until(lambda: gone(new_pid), 15, "the new master to exit")
