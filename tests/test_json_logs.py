"""--log-format json: every line the master and its workers write is one JSON object,
with the lifecycle events, the worker's nr on worker lines and status on reaped lines."""

from __future__ import annotations

import datetime
import json
import os
import signal

from helpers import run_cli

APP = """
import time
def worker_start(worker):
    worker.log.info("hello from the app")
    time.sleep(0.05)
"""


def entries(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)  # every line, not some
        assert isinstance(entry, dict), line
        for key in ("time", "level", "event", "pid", "message"):
            assert key in entry, (key, line)
        datetime.datetime.fromisoformat(str(entry["time"]))
        parsed.append(entry)
    return parsed


def test_every_line_is_json_with_the_lifecycle_events(start, app_file):
    app_file(APP)
    run = start("--app", "app.py", "--workers", "2", "--log-format", "json")
    pids = run.wait_ready(2)
    run.wait_log("hello from the app", 2)
    os.kill(pids[1], signal.SIGKILL)  # a worker of our own master
    run.wait_log(rf'"pid": {pids[1]}, "nr": 1, "status": "killed by SIGKILL"')
    run.wait_log(r'"event": "worker_ready"', 3)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
    found = entries(run.log())
    events = [e["event"] for e in found]
    for event in ("master_ready", "worker_spawned", "worker_ready", "worker_reaped"):
        assert event in events, event
    assert events[0] == "master_ready" and events[-1] == "master_exited"
    assert found[0]["pid"] == run.pid and found[0]["level"] == "info"
    killed = next(e for e in found if e["event"] == "worker_reaped" and e["pid"] == pids[1])
    assert killed == {
        **killed,
        "nr": 1,
        "status": "killed by SIGKILL",
        "cause": "signal",
        "message": f"reaped pid={pids[1]} worker[1] status=killed by SIGKILL",
    }
    spawned = [e for e in found if e["event"] == "worker_spawned"]
    assert {(e["nr"], e["pid"]) for e in spawned} >= {(0, pids[0]), (1, pids[1])}
    app_lines = [e for e in found if e["message"] == "hello from the app"]
    assert {e["nr"] for e in app_lines} == {0, 1}
    assert all(e["event"] == "log" for e in app_lines)
    assert {e["pid"] for e in app_lines if e["nr"] == 0} == {pids[0]}  # the writer's pid


def test_text_stays_the_default(start, app_file):
    app_file(APP)
    run = start("--app", "app.py")
    run.wait_ready(1)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
    assert run.log().startswith("[") and '"event"' not in run.log()


def test_a_bad_log_format_is_a_usage_error(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    result = run_cli("--app", "app.py", "--log-format", "xml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--log-format" in result.stderr and "'text' or 'json'" in result.stderr
