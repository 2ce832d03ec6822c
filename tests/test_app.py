"""--app: what names an app (a file, a module, a package directory, a name
that is not UTF-8), and the one line a name that is no app gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest
from helpers import loop_app, one_error_line, run_cli, wait_until


@pytest.mark.parametrize("name", ["somedir", "my-dir"])
@pytest.mark.parametrize("preload", [False, True])
def test_app_that_is_a_directory(tmp_path: Path, name: str, preload: bool) -> None:
    (tmp_path / name).mkdir()
    result = run_cli("--app", name, *(["--preload"] if preload else []), cwd=tmp_path)
    one_error_line(result, 1, "is a directory", name)


def test_app_that_is_a_package_directory_still_runs(start, tmp_path: Path) -> None:
    """A directory with __init__.py is a module: it runs, the message is only for
    a directory no module answers to."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text(loop_app())
    run = start("--app", "tasks")
    run.wait_ready(1)


def _title(pid: int) -> str:
    # setproctitle pads the old argv area with NULs: psutil sees empty arguments.
    return " ".join(arg for arg in psutil.Process(pid).cmdline() if arg)


def test_app_file_name_that_is_not_utf8(start, tmp_path: Path) -> None:
    app = os.fsdecode(os.fsencode(tmp_path) + b"/app\xff.py")  # a surrogate escape in str
    Path(app).write_text(loop_app())
    control = tmp_path / "ctl.sock"
    pid_path = tmp_path / "app.pid"
    run = start("--app", app, "--control", str(control), "--pid", str(pid_path))
    workers = run.wait_ready(1)
    shown = "app\ufffd.py"
    master_title = f"unicornish master {tmp_path}/{shown}"  # the app as given
    wait_until(lambda: _title(run.pid) == master_title, 5, "the master's title")
    assert _title(workers[0]) == f"unicornish worker[0] {shown}"
    assert "Traceback" not in run.log()
    result = run_cli("status", "--control", str(control), "--json", cwd=tmp_path)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["master"]["app"] == shown
    for how in (["--control", str(control)], ["--pid", str(pid_path)]):
        result = run_cli("status", *how, cwd=tmp_path)
        assert result.returncode == 0 and f"app={shown} " in result.stdout, result


@pytest.mark.parametrize("preload", [False, True])
def test_broken_app_whose_name_is_not_utf8(tmp_path: Path, preload: bool) -> None:
    app = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.py")
    Path(app).write_text("def worker_start(worker)\n")
    result = run_cli("--app", app, *(["--preload"] if preload else []), cwd=tmp_path)
    one_error_line(result, 1, "SyntaxError", "bad\ufffd.py")
