"""`unicornish status` (issue 5): table and --json, over the control socket or from --pid."""

from __future__ import annotations

import json
import signal

from helpers import run_cli, wait_until

MASTER_KEYS = {
    "pid", "uptime", "app", "workers_wanted", "workers_running",
    "workers_min", "workers_max", "workers_idle", "ready", "not_ready",
}  # fmt: skip
WORKER_KEYS = {"nr", "pid", "age", "state", "tasks", "connections", "task_age", "rss", "uss", "cpu"}

# worker[0] waits for connections (idle), worker[1] sleeps in its tasks (busy),
# worker[2] never finishes after_fork (booting). 20 MiB preloaded and shared.
MIXED_APP = """
import time
SHARED = b"x" * (20 * 1024 * 1024)
def after_fork(worker):
    if worker.nr == 2:
        time.sleep(120)
def worker_start(worker):
    if worker.nr == 0:
        got = worker.accept(timeout=60)
        if got:
            got[0].close()
    else:
        time.sleep(0.4)
"""


def status(*args: str) -> tuple[int, str, str]:
    result = run_cli("status", *args)
    return result.returncode, result.stdout, result.stderr


def test_status_table_and_json_with_idle_busy_and_booting_workers(start, app_file, tmp_path):
    app = app_file(MIXED_APP)
    control = tmp_path / "ctl.sock"
    pid_file = tmp_path / "app.pid"
    run = start(
        "--app", str(app), "--workers", "3", "--preload", "--control", str(control),
        "--pid", str(pid_file), "--listen", f"unix:{tmp_path / 'app.sock'}",
    )  # fmt: skip
    pids = run.wait_workers(3)
    run.wait_log(r"worker\[1\] ready")

    def snapshot() -> dict:
        code, out, err = status("--control", str(control), "--json")
        assert code == 0, err
        return json.loads(out)

    def settled() -> dict | None:
        data = snapshot()
        by_nr = {w["nr"]: w for w in data["workers"]}
        if by_nr[0]["state"] == "idle" and by_nr[1]["tasks"] >= 1:
            return data
        return None

    data = wait_until(settled, 10, "worker[0] idle and worker[1] done with a task")
    assert isinstance(data, dict)
    assert set(data) == {"master", "workers"}
    master = data["master"]
    assert set(master) == MASTER_KEYS
    assert master["pid"] == run.pid and master["app"] == "app.py"
    assert master["workers_wanted"] == 3 and master["workers_running"] == 3
    # A fixed count is its own MIN and MAX; worker[0] waits in accept().
    assert (master["workers_min"], master["workers_max"], master["workers_idle"]) == (3, 3, 1)
    assert master["uptime"] > 0
    # worker[2] never boots: the master has never had all 3 ready.
    assert master["ready"] is False and master["not_ready"] == "booting: 2 of 3 ready"
    by_nr = {w["nr"]: w for w in data["workers"]}
    assert sorted(by_nr) == [0, 1, 2]
    for nr, w in by_nr.items():
        assert set(w) == WORKER_KEYS
        assert w["pid"] == pids[nr]
        assert w["age"] > 0 and w["age"] <= master["uptime"]
        assert isinstance(w["rss"], int) and isinstance(w["uss"], int)
        assert 0 < w["uss"] <= w["rss"]
        assert w["cpu"] >= 0
    assert by_nr[0]["state"] == "idle" and by_nr[0]["task_age"] is None
    assert by_nr[1]["state"] == "busy" and 0 <= by_nr[1]["task_age"] < 5
    assert by_nr[2]["state"] == "booting" and by_nr[2]["tasks"] == 0
    assert by_nr[2]["task_age"] is None
    # The preloaded 20 MiB are shared with the master: in RSS, not in USS.
    assert by_nr[1]["rss"] - by_nr[1]["uss"] > 15 * 1024 * 1024, by_nr[1]

    # ctl status says the same, with "ok".
    result = run_cli("ctl", "--control", str(control), "status")
    assert result.returncode == 0
    reply = json.loads(result.stdout)
    assert reply["ok"] is True and reply["master"]["pid"] == run.pid

    # The table.
    code, out, _err = status("--control", str(control))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"unicornish master pid={run.pid} app=app.py uptime=")
    assert "workers: 3 running, 3 wanted, not ready (booting: 2 of 3 ready)" in lines[0]
    assert lines[1].split() == [
        "NR", "PID", "AGE", "STATE", "TASKS", "TASK_AGE", "RSS", "USS", "CPU",
    ]  # fmt: skip
    rows = {int(line.split()[0]): line.split() for line in lines[2:]}
    assert rows[0][1] == str(pids[0]) and rows[0][3] == "idle"
    assert rows[1][3] == "busy" and rows[2][3] == "booting"
    assert rows[0][6].endswith("M") and rows[0][8].endswith("%")

    # Without the control socket: what psutil sees from the pid file.
    code, out, _err = status("--pid", str(pid_file), "--json")
    assert code == 0
    seen = json.loads(out)
    assert seen["master"]["pid"] == run.pid and seen["master"]["app"] == "app.py"
    assert seen["master"]["workers_running"] == 3
    assert set(seen["master"]) == MASTER_KEYS and seen["master"]["workers_idle"] is None
    assert {w["nr"]: w["pid"] for w in seen["workers"]} == pids
    for w in seen["workers"]:
        assert set(w) == WORKER_KEYS
        assert w["tasks"] is None and w["task_age"] is None
        assert w["rss"] > 0 and w["uss"] > 0
    code, out, _err = status("--pid", str(pid_file))
    assert code == 0 and "from pid file" in out and f"pid={run.pid}" in out

    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0
    # Not running: LSB exit 3, a reason on stderr, nothing on stdout.
    for args in (["--control", str(control)], ["--pid", str(pid_file)]):
        code, out, err = status(*args)
        assert code == 3, (args, err)
        assert out == "" and "not running" in err
    # A stale pid file (the pid is dead) is "not running" too.
    pid_file.write_text(f"{run.pid}\n")
    code, _out, err = status("--pid", str(pid_file), "--json")
    assert code == 3 and "not a live master" in err


def test_status_falls_back_to_the_pid_file_and_needs_a_target(start, app_file, tmp_path):
    app = app_file("import time\ndef worker_start(worker):\n    time.sleep(0.05)\n")
    pid_file = tmp_path / "app.pid"
    run = start("--app", str(app), "--workers", "1", "--pid", str(pid_file))
    run.wait_ready(1)
    wait_until(pid_file.exists, 5, "pid file")
    # No control socket at that path, but the pid file names a live master.
    code, out, _err = status("--control", str(tmp_path / "none.sock"), "--pid", str(pid_file))
    assert code == 0 and f"pid={run.pid}" in out
    result = run_cli("status", env={"UNICORNISH_CONTROL": ""})
    assert result.returncode == 2 and result.stderr.startswith("unicornish: error: ")
    result = run_cli("status", "--bogus")
    assert result.returncode == 2
