"""Bad input: one clear line on stderr, exit 2 (usage) or 1 (runtime), no traceback, no worker."""

from __future__ import annotations

import pytest
from conftest import run_cli

GOOD = "def worker_start(worker):\n    pass\n"


def check(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("unicornish: error: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--bogus"], ["--bogus"]),
        ([], ["--app"]),
        (["--app"], ["--app"]),
        (["--app", "APP", "--workers", "-1"], ["--workers", ">= 0"]),
        (["--app", "APP", "--workers", "two"], ["--workers"]),
        (["--app", "APP", "--workers", "1.5"], ["--workers"]),
        (["--app", "APP", "--workers", "autox"], ["--workers", "'auto'"]),
        (["--app", "APP", "--workers", "auto", "--worker-memory", "0"], ["--worker-memory", "> 0"]),
        (["--app", "APP", "--worker-memory", "lots"], ["--worker-memory"]),
        (["--app", "APP", "--poll", "0"], ["--poll"]),
        (["--app", "APP", "--poll", "-3"], ["--poll"]),
        (["--app", "APP", "--poll", "nan"], ["--poll"]),
        (["--app", "APP", "--timeout", "soon"], ["--timeout"]),
        (["--app", "APP", "--graceful-timeout", "-1"], ["--graceful-timeout"]),
        (["--app", "APP", "--listen", "nonsense"], ["--listen"]),
        (["--app", "APP", "--listen", "127.0.0.1:99999"], ["port"]),
        (["--app", "APP", "extra"], ["extra"]),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, words):
    app = tmp_path / "app.py"
    app.write_text(GOOD)
    args = [str(app) if a == "APP" else a for a in args]
    check(run_cli(*args, cwd=tmp_path), 2, *words)


@pytest.mark.parametrize(
    "name, source, words",
    [
        ("missing.py", None, ["not found", "missing.py"]),
        ("syntax.py", "def worker_start(worker)\n    pass\n", ["SyntaxError", "syntax.py"]),
        ("nostart.py", "def something_else():\n    pass\n", ["worker_start"]),
        ("notcallable.py", "worker_start = 3\n", ["worker_start"]),
        ("raises.py", "raise RuntimeError('no db')\n", ["RuntimeError", "no db"]),
        ("imports.py", "import no_such_module_here\n", ["no_such_module_here"]),
    ],
)
@pytest.mark.parametrize("preload", [False, True])
def test_bad_apps_exit_1(tmp_path, name, source, words, preload):
    if source is not None:
        (tmp_path / name).write_text(source)
    args = ["--app", str(tmp_path / name)] + (["--preload"] if preload else [])
    result = run_cli(*args, cwd=tmp_path)
    check(result, 1, *words)


def test_unknown_module_exits_1(tmp_path):
    check(run_cli("--app", "no_such_pkg.tasks", cwd=tmp_path), 1, "no_such_pkg")


def test_unreadable_app(tmp_path):
    check(run_cli("--app", str(tmp_path), cwd=tmp_path), 1, "directory")


@pytest.mark.parametrize(
    "line, words", [('workers = "autox"', ["workers", "'auto'"]), ("worker_memory = 0", ["> 0"])]
)
def test_bad_auto_workers_in_config_file_exit_1(tmp_path, line, words):
    # Like every bad value in a config file: what it names is wrong, exit 1.
    (tmp_path / "app.py").write_text(GOOD)
    (tmp_path / "c.py").write_text(f'app = "app.py"\n{line}\n')
    check(run_cli("-c", "c.py", cwd=tmp_path), 1, "c.py", *words)


def test_version_and_help(tmp_path):
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("unicornish ")
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--app",
        "--workers",
        "--worker-memory",
        "--poll",
        "--preload",
        "--timeout",
        "--graceful-timeout",
        "--pid",
        "--log-file",
        "--listen",
        "--config",
    ):
        assert option in result.stdout
