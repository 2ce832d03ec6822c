"""--drain and `status --ready` (issue 13), the way a container runs them: the master is
PID 1 of a pid namespace (`unshare --pid --fork --mount-proc`), inside child cgroups
with a CPU quota and a memory limit (as a Kubernetes pod's limits), with `--workers
auto --worker-memory 200 --term graceful --drain 2`, serving examples/http_app.py.

TERM while client threads hammer the socket: readiness turns off at once, every
request is still answered during the drain, and the master exits 0 within drain +
graceful timeout. A second TERM skips the rest of the drain; INT never waits for it.

Needs root (cgroups, a pid namespace). Teardown kills what these tests started and
removes the groups, even when a test failed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    MIB,
    Group,
    Groups,
    NotifyListener,
    free_port,
    http,
    loop_app,
    run_cli,
    set_cpu_quota,
    set_memory_limit,
    unshare_or_skip,
    wait_until,
)
from http_client import Hammer, copy_http_app, get, tcp_target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and pid namespaces need root")

DRAIN = 2.0
GRACE = 3.0
# The pod's limits, as in contrib/kubernetes/deployment.yaml: 2 CPUs, 512 MiB.
CPU_QUOTA, CPU_PERIOD = 200_000, 100_000
MEMORY = 512 * MIB
WORKER_MEMORY = "200"  # floor(512 / 200) = 2: memory and CPUs agree on 2 workers


def unshare() -> list[str]:
    return [unshare_or_skip(), "--pid", "--fork", "--mount-proc"]


class Container:
    """A master as PID 1 of its own pid namespace, in a CPU and a memory group."""

    def __init__(self, groups: Groups, tmp: Path, *args: str) -> None:
        cpu = groups.make("cpu")
        set_cpu_quota(cpu, CPU_QUOTA, CPU_PERIOD)
        memory = groups.make("memory")
        set_memory_limit(memory, MEMORY)
        self.groups: list[Group] = [cpu, memory]
        self.control = str(tmp / "ctl.sock")
        app = copy_http_app(tmp / "http_app.py")
        # The launcher joins the groups, then execs unshare, which forks the master
        # as pid 1 of the new namespace: Run's session holds every process.
        self.run = groups.start(
            "--app", str(app), "--listen", "127.0.0.1:0", "--workers", "auto",
            "--worker-memory", WORKER_MEMORY, "--term", "graceful",
            "--graceful-timeout", f"{GRACE:g}", "--control", self.control, *args,
            prefix=[*groups.launcher(self.groups), *unshare()],
        )  # fmt: skip
        groups.runs.append(self.run)
        self.run.wait_log(r"master process ready pid=1\b", timeout=15)
        line = self.run.wait_log(r"workers auto = \d+ \(")
        self.workers = int(line.split("workers auto = ")[1].split()[0])
        children = psutil.Process(self.run.pid).children()
        assert len(children) == 1, children
        self.master = children[0]  # the master's pid out here (in there it is 1)

    def ready(self) -> tuple[int, str]:
        result = run_cli("status", "--ready", "--control", self.control)
        return result.returncode, (result.stdout + result.stderr).strip()

    def wait_ready(self) -> None:
        wait_until(lambda: self.ready()[0] == 0, 15, f"ready; log:\n{self.run.log()[-2000:]}")

    def exit_code(self, timeout: float) -> int:
        # unshare passes on the exit code of its child, the master.
        return self.run.wait_exit(timeout)


def test_term_drains_every_request_then_exits_0_within_drain_plus_grace(groups, tmp_path):
    port = free_port()  # the probes' endpoint, as contrib/kubernetes points them
    box = Container(groups, tmp_path, "--drain", f"{DRAIN:g}", "--metrics", f"127.0.0.1:{port}")
    log = box.run.log()
    assert "running as pid 1" in log
    assert "stop: drain 2s, then graceful up to 3s (at most 5s in all)" in log
    # 2 CPUs of quota and 512 MiB / 200 MiB per worker: 2 (1 on a one-CPU host).
    assert box.workers == min(2, len(os.sched_getaffinity(0))), log
    box.wait_ready()
    assert box.ready() == (0, "ready")
    assert http(port, "/readyz") == (200, "ready\n")
    assert http(port, "/healthz")[0] == 200
    box.run.wait_log(r"worker\[\d+\] ready", box.workers)
    target = tcp_target(box.run.log())
    assert get(target)["master_pid"] == 1

    with Hammer(target, threads=4) as hammer:
        hammer.wait_answers(20)
        term_at = time.monotonic()
        box.master.send_signal(signal.SIGTERM)
        code, said = box.ready()
        answered_at = time.monotonic()
        # Not ready from the first probe after TERM on, while the workers still serve.
        # (How soon is bounded by the CLI's own start-up, a second on a loaded host.)
        assert (code, said) == (1, "not ready: draining"), box.run.log()[-2000:]
        assert answered_at - term_at < DRAIN
        # The readiness probe says so too, while the liveness probe stays green.
        assert http(port, "/readyz") == (503, "not ready: draining\n")
        assert http(port, "/healthz")[0] == 200
        # Still serving: Kubernetes takes a while to stop sending traffic here.
        wait_until(lambda: time.monotonic() >= term_at + DRAIN / 2, DRAIN, "half the drain")
        hammer.stop()
        stopped_at = time.monotonic()
    assert stopped_at < term_at + DRAIN, "the hammer outlived the drain (a loaded host?)"
    assert hammer.failures == [], hammer.failures[:5]
    during = [a for a in hammer.snapshot() if a.started >= term_at]
    assert len(during) >= 5, len(during)
    assert {a.master_pid for a in during} == {1}

    status = json.loads(run_cli("status", "--json", "--control", box.control).stdout)
    assert status["master"]["ready"] is False and status["master"]["not_ready"] == "draining"
    assert status["master"]["workers_running"] == box.workers  # nobody stopped yet

    assert box.exit_code(DRAIN + GRACE + 5) == 0
    took = time.monotonic() - term_at
    assert DRAIN <= took < DRAIN + GRACE + 1, took
    text = box.run.log()
    assert "TERM received: draining for 2s (not ready, still serving), then graceful stop" in text
    assert "drain over after 2.0s: graceful stop" in text
    assert text.rstrip().endswith("master exited")
    assert box.ready()[0] == 3  # not running


@pytest.mark.parametrize(
    ("second", "line"),
    [
        (signal.SIGTERM, "TERM received during the drain (rest of it skipped): graceful stop"),
        (signal.SIGQUIT, "QUIT received during the drain (rest of it skipped): graceful stop"),
        (signal.SIGINT, "INT received: quick stop"),
    ],
    ids=["TERM", "QUIT", "INT"],
)
def test_a_second_stop_signal_skips_the_rest_of_the_drain(groups, tmp_path, second, line):
    long_drain = 60.0  # far longer than the test may take: only the skip can end it
    box = Container(groups, tmp_path, "--drain", f"{long_drain:g}")
    box.wait_ready()
    box.master.send_signal(signal.SIGTERM)
    box.run.wait_log(r"TERM received: draining for 60s")
    assert box.ready() == (1, "not ready: draining")
    # Workers keep serving while it drains.
    assert get(tcp_target(box.run.log()))["master_pid"] == 1
    second_at = time.monotonic()
    box.master.send_signal(second)
    assert box.exit_code(GRACE + 5) == 0
    assert time.monotonic() - second_at < GRACE + 1
    text = box.run.log()
    assert line in text, text[-2000:]
    assert "drain over" not in text


# -- status --ready outside a container ------------------------------------------------

# Workers boot only once the test says so, so "booting" can be seen.
GATED_APP = """
import os, time
GATE = {gate!r}
def after_fork(worker):
    while not os.path.exists(GATE):
        time.sleep(0.02)
def worker_start(worker):
    time.sleep(0.05)
"""


def test_status_ready_follows_boot_and_stop_and_says_unknown_from_a_pid_file(
    start, app_file, tmp_path
):
    gate = tmp_path / "gate"
    app = app_file(GATED_APP.format(gate=str(gate)))
    control = str(tmp_path / "ctl.sock")
    pid_file = tmp_path / "app.pid"
    run = start(
        "--app", str(app), "--workers", "2", "--control", control, "--pid", str(pid_file),
        "--drain", "30", "--graceful-timeout", "5",
    )  # fmt: skip

    def ready() -> tuple[int, str]:
        result = run_cli("status", "--ready", "--control", control)
        return result.returncode, (result.stdout + result.stderr).strip()

    wait_until(lambda: ready()[0] != 3, 10, "the control socket")
    assert ready() == (1, "not ready: booting: 0 of 2 ready")
    table = run_cli("status", "--control", control).stdout.splitlines()[0]
    assert table.endswith("2 wanted, not ready (booting: 0 of 2 ready)"), table
    gate.touch()
    run.wait_ready(2)
    wait_until(lambda: ready() == (0, "ready"), 10, "ready")
    assert run_cli("status", "--control", control).stdout.splitlines()[0].endswith(", ready")
    data = json.loads(run_cli("status", "--ready", "--json", "--control", control).stdout)
    assert data["master"]["ready"] is True and data["master"]["not_ready"] is None

    # A pid file shows processes, not readiness: unknown (4), never a guess.
    wait_until(pid_file.exists, 5, "the pid file")
    result = run_cli("status", "--ready", "--pid", str(pid_file))
    assert result.returncode == 4 and result.stdout == ""
    assert result.stderr.startswith("unicornish: unknown: ") and "--control" in result.stderr
    assert result.stderr.count("\n") == 1
    seen = json.loads(run_cli("status", "--json", "--pid", str(pid_file)).stdout)
    assert seen["master"]["ready"] is None and seen["master"]["not_ready"] is None

    # QUIT drains too (TERM here is a quick stop: --term quick is the default).
    run.signal(signal.SIGQUIT)
    run.wait_log(r"QUIT received: draining for 30s")
    assert ready() == (1, "not ready: draining")
    # Commands that would change the workers are refused while it drains.
    result = run_cli("ctl", "--control", control, "ttin")
    assert result.returncode == 1 and "master is stopping" in result.stdout
    # A quick stop (TERM with --term quick) does not wait for the drain.
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert "TERM received: quick stop" in run.log()
    assert ready()[0] == 3
    result = run_cli("status", "--ready", "--pid", str(pid_file))
    assert result.returncode == 3 and "not running" in result.stderr


def test_drain_tells_systemd_stopping_at_once_and_sleeps_until_its_end(start, app_file, tmp_path):
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        app = app_file(loop_app())
        run = start("--app", str(app), "--drain", "1.5", env={"NOTIFY_SOCKET": notify.path})
        notify.wait(run.pid, "READY=1")
        master = psutil.Process(run.pid)
        cpu_before = sum(master.cpu_times()[:2])
        quit_at = time.monotonic()
        run.signal(signal.SIGQUIT)
        notify.wait(run.pid, "STOPPING=1")
        # At the drain's start, not at its end: systemd knows the service is going.
        assert time.monotonic() - quit_at < 1.0
        # Most of the drain: the master should have slept through it.
        wait_until(lambda: time.monotonic() >= quit_at + 1.2, 2, "most of the drain")
        cpu = sum(master.cpu_times()[:2]) - cpu_before
        assert "drain over" not in run.log()
        assert run.wait_exit(10) == 0
        took = time.monotonic() - quit_at
        assert 1.5 <= took < 2.5, took
        # The drain is a deadline the master sleeps to, not a loop that polls the clock.
        assert cpu < 0.15, f"master used {cpu:.2f}s of CPU while draining"
        assert notify.lines_from(run.pid).count("STOPPING=1") == 1
        assert "drain over after 1.5s: graceful stop" in run.log()
    finally:
        notify.close()


def test_during_a_drain_usr1_and_ctl_reopen_agree_and_every_refusal_is_logged(
    start, app_file, tmp_path
):
    app = app_file(loop_app())
    control = str(tmp_path / "ctl.sock")
    run = start("--app", str(app), "--control", control, "--drain", "30")
    run.wait_ready(1)
    run.signal(signal.SIGQUIT)
    run.wait_log("QUIT received: draining for 30s")
    # A log rotation during a stop: the signal and the command both reopen.
    run.signal(signal.SIGUSR1)
    run.wait_log("reopened log files", 1)
    result = run_cli("ctl", "--control", control, "reopen")
    assert result.returncode == 0, result.stdout + result.stderr
    run.wait_log("reopened log files", 2)
    # What would change the workers is refused, and the log says so each time.
    run.signal(signal.SIGHUP)
    run.wait_log("HUP ignored: master is stopping", 1)
    result = run_cli("ctl", "--control", control, "reload")
    assert result.returncode == 1 and "master is stopping" in result.stdout
    run.wait_log("control reload ignored: master is stopping", 1)
    run.signal(signal.SIGTTIN)
    run.wait_log("TTIN ignored: master is stopping", 1)
    run.signal(signal.SIGTERM)  # --term quick: ends the drain with a quick stop
    assert run.wait_exit(10) == 0
    assert "HUP received" not in run.log()
