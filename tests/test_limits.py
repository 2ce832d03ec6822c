"""Values that once made the master unusable, and signals it must act on at once."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
from helpers import gone, let_pass, loop_app, run_cli, wait_until

SLEEPY = loop_app()


def test_absurd_worker_counts_are_refused_at_the_edge(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(SLEEPY)
    for option in ("--workers", "--spares"):
        result = run_cli("--app", str(app), option, "99999999999")
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "at most 10000" in lines[0], result.stderr


def test_poll_beyond_what_the_selector_takes_is_refused(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(SLEEPY)
    result = run_cli("--app", str(app), "--poll", "2147484")
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--poll" in result.stderr and "at most" in result.stderr


def test_scale_beyond_the_maximum_gets_an_error_reply(start, app_file, tmp_path):
    sock = tmp_path / "ctl.sock"
    run = start("--app", str(app_file(SLEEPY)), "--workers", "1", "--control", str(sock))
    run.wait_ready(1)
    result = run_cli("ctl", "--control", str(sock), "scale", "99999999999")
    assert result.returncode == 1, result
    assert "at most 10000" in result.stdout
    # The refusal names what was given (it used to say `got 10001` for any long number).
    result = run_cli("ctl", "--control", str(sock), "scale", "9" * 32)
    assert result.returncode == 1, result
    assert json.loads(result.stdout)["error"] == f"scale: at most 10000 workers, got {'9' * 32}"
    result = run_cli("ctl", "--control", str(sock), "scale", "9" * 5000)
    assert result.returncode == 1, result
    assert json.loads(result.stdout)["error"] == (
        "scale: at most 10000 workers, got a number of 5000 digits"
    )
    assert "Traceback" not in result.stderr
    # Still answering, still one worker.
    assert run_cli("ctl", "--control", str(sock), "status").returncode == 0
    assert len(run.worker_pids()) == 1


def test_term_during_a_large_start_is_acted_on_at_once(start, app_file):
    run = start("--app", str(app_file(SLEEPY)), "--workers", "3000", "--graceful-timeout", "5")
    wait_until(lambda: run.count(r"spawned pid=") >= 20, 20, "the first workers")
    sent = time.monotonic()
    run.signal(signal.SIGTERM)
    run.wait_log("TERM received", 1, 5)
    acted = time.monotonic() - sent
    assert acted < 1.0, f"TERM was acted on {acted:.2f}s after it was sent"
    assert run.wait_exit(60) == 0
    assert run.count(r"spawned pid=") < 3000


def test_usr2_to_a_new_master_while_the_old_one_runs_is_refused(start, app_file, tmp_path):
    pid_file = tmp_path / "app.pid"
    run = start("--app", str(app_file(SLEEPY)), "--workers", "1", "--pid", str(pid_file))
    run.wait_ready(1)
    run.signal(signal.SIGUSR2)
    line = run.wait_log(r"USR2: started new master pid=\d+")
    new = int(re.findall(r"started new master pid=(\d+)", line)[-1])
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() == str(new), 10)
    oldbin = (tmp_path / "app.pid.oldbin").read_text()
    wait_until(lambda: run.count(r"worker\[0\] ready") >= 2, 10, "the new master's worker")
    os.kill(new, signal.SIGUSR2)
    wait_until(lambda: run.count(r"USR2 ignored: old master pid=\d+ still runs") >= 1, 10)
    assert (tmp_path / "app.pid.oldbin").read_text() == oldbin
    assert [p.pid for p in psutil.Process(new).children() if p.name() == "unicornish"] == []
    os.kill(new, signal.SIGQUIT)
    wait_until(lambda: gone(new), 15, "the new master to exit")


def test_signal_bursts_count_alike_and_log_once(start, app_file):
    run = start("--app", str(app_file(SLEEPY)), "--workers", "1")
    run.wait_ready(1)
    for _ in range(200):
        os.kill(run.pid, signal.SIGTTIN)
    wait_until(lambda: run.count("TTIN") >= 1, 5)
    let_pass(0.5)  # the burst window (0.1 s) ends; its summary line, if any, is out
    ttin_lines = run.count(r"TTIN[^\n]*workers wanted")
    assert 1 <= ttin_lines <= 2, run.log()
    up = int(re.findall(r"TTIN[^\n]*: (\d+) workers wanted", run.log())[-1])
    assert up >= 2
    for _ in range(200):
        os.kill(run.pid, signal.SIGTTOU)
    wait_until(lambda: run.count(r"TTOU[^\n]*workers wanted") >= 1, 5)
    let_pass(0.5)
    ttou_lines = run.count(r"TTOU[^\n]*workers wanted")
    assert 1 <= ttou_lines <= 2, run.log()
