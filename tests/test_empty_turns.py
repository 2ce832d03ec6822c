"""A turn that only waited is no task (issue 23, item 7): a real master and a
consumer whose worker.accept(timeout=...) often returns None."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from conftest import run_cli, wait_until

CONSUMER = """
def worker_start(worker):
    got = worker.accept(timeout=0.05)
    if got is None:
        print("nothing", flush=True)   # nothing to do: no task
        return
    conn, _ = got
    conn.sendall(b"done")
    conn.close()
"""


def tasks_of(control: Path) -> list[int]:
    result = run_cli("ctl", "--control", str(control), "status")
    assert result.returncode == 0, result.stderr
    return [w["tasks"] for w in json.loads(result.stdout)["workers"]]


def job(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        return client.recv(16)


def test_an_accept_that_got_nothing_is_no_task(start, app_file, tmp_path):
    control, sock = tmp_path / "ctl.sock", tmp_path / "jobs.sock"
    app = app_file(CONSUMER)
    run = start(
        "--app", str(app), "--workers", "1", "--max-tasks", "3",
        "--listen", f"unix:{sock}", "--control", str(control),
    )  # fmt: skip
    (pid,) = run.wait_ready(1).values()
    # Twenty turns that got nothing: no task, so no recycling at 3.
    wait_until(lambda: run.stdout().count("nothing") >= 20, 20, "20 empty turns")
    assert tasks_of(control) == [0]
    assert "reached --max-tasks" not in run.log()
    assert run.worker_pids() == {0: pid}
    # Three jobs are three tasks, whatever the empty turns between them: then
    # the --max-tasks limit (3 here: its jitter is 10 % of 3, rounded down).
    for _ in range(2):
        assert job(sock) == b"done"
    wait_until(lambda: tasks_of(control) == [2], 10, "2 tasks")
    assert job(sock) == b"done"
    run.wait_log(r"worker\[0\] reached --max-tasks after 3 tasks")
