"""contrib/logrotate/unicornish (issue 5): a real logrotate run against a running master."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
from helpers import ROOT, wait_until

APP = """
import time
def worker_start(worker):
    worker.log.info("worker[%d] tick", worker.nr)
    time.sleep(0.05)
"""


def test_logrotate_config_rotates_and_workers_follow(start, app_file, tmp_path):
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        pytest.skip("logrotate is not installed")
    logs, run_dir = tmp_path / "logs", tmp_path / "run"
    logs.mkdir(mode=0o755)
    run_dir.mkdir()
    conf = (ROOT / "contrib" / "logrotate" / "unicornish").read_text()
    conf = conf.replace("/var/log/unicornish", str(logs)).replace("/run/unicornish", str(run_dir))
    conf = conf.replace("create 0640 root adm", "create 0640 root root")
    conf_path = tmp_path / "logrotate.conf"
    conf_path.write_text(conf)
    log = logs / "app.log"
    app = app_file(APP)
    run = start(
        "--app", str(app), "--workers", "2", "--log-file", str(log),
        "--pid", str(run_dir / "app.pid"), log_file=False,
    )  # fmt: skip
    run.log_path = log
    run.wait_ready(2)
    wait_until(lambda: (run_dir / "app.pid").exists(), 5, "pid file")
    result = subprocess.run(
        [logrotate, "-f", "-s", str(tmp_path / "state"), str(conf_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    rotated = logs / "app.log.1"
    assert rotated.exists()
    wait_until(
        lambda: (
            log.exists()
            and "reopened log files" in log.read_text()
            and "worker[0] tick" in log.read_text()
            and "worker[1] tick" in log.read_text()
        ),
        5,
        "master and both workers writing to the new file",
    )
    assert "reopened log files" not in rotated.read_text()
    for path in (log, rotated):
        for line in path.read_text().splitlines():
            assert line.startswith("["), line  # whole lines only, none cut
    run.signal(signal.SIGTERM)
    assert run.wait_exit(5) == 0
