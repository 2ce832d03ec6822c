"""build_settings and read_config_file (unicornish/config.py): defaults < config
file < command line, and what a config file may not do. Files, no processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unicornish.config import START_DIR, Settings, StartupError, build_settings, read_config_file


def config_file(tmp_path: Path, source: str, name: str = "conf.py") -> str:
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def test_command_line_alone_gives_the_defaults_for_the_rest():
    settings, warnings = build_settings({"app": "a.py", "workers": 3})
    assert warnings == []
    assert settings == Settings(app="a.py", workers=3)
    assert (settings.poll, settings.graceful_timeout, settings.term) == (30.0, 30.0, "quick")
    assert settings.hooks == {}


def test_no_app_anywhere():
    with pytest.raises(StartupError, match=r"^no app: give --app, --asgi or --wsgi$"):
        build_settings({"workers": 2})


def test_no_app_in_the_config_either(tmp_path):
    path = config_file(tmp_path, "workers = 2\n")
    with pytest.raises(StartupError) as caught:
        build_settings({"config": path})
    assert str(caught.value) == (
        f"no app: give --app, --asgi or --wsgi, or set app, asgi or wsgi in {path}"
    )


def test_command_line_beats_the_file_which_beats_the_defaults(tmp_path):
    path = config_file(
        tmp_path,
        'app = "from-file.py"\nworkers = 3\ntimeout = 5\nterm = "graceful"\n',
    )
    settings, warnings = build_settings({"config": path, "workers": 2, "graceful_timeout": 7.0})
    assert warnings == []
    assert settings.app == "from-file.py"  # only in the file
    assert settings.workers == 2  # both: the command line wins
    assert settings.timeout == 5.0  # only in the file, converted
    assert settings.term == "graceful"
    assert settings.graceful_timeout == 7.0  # only on the command line
    assert settings.poll == 30.0  # neither: the default
    assert settings.config == path


def test_file_values_go_through_the_converters(tmp_path):
    path = config_file(
        tmp_path,
        'app = "a.py"\nworkers = "4"\nmax_tasks = 0\nlisten = "unix:/tmp/x.sock"\n',
    )
    settings, _ = build_settings({"config": path})
    assert settings.workers == 4
    assert settings.max_tasks is None
    assert settings.listen == ("unix:/tmp/x.sock",)


def test_listen_becomes_a_tuple():
    settings, _ = build_settings({"app": "a.py", "listen": ["127.0.0.1:0", "unix:/s"]})
    assert settings.listen == ("127.0.0.1:0", "unix:/s")


def test_relative_pid_and_log_file_are_fixed_to_the_start_directory():
    settings, _ = build_settings(
        {"app": "a.py", "pid": "run/../u.pid", "log_file": "/var/log/u.log"}
    )
    assert settings.pid == os.path.normpath(os.path.join(START_DIR, "u.pid"))
    assert os.path.isabs(settings.pid)
    assert settings.log_file == "/var/log/u.log"


def test_hooks_come_from_the_file_and_do_not_count_in_equality(tmp_path):
    path = config_file(
        tmp_path,
        'app = "a.py"\ndef after_fork(worker):\n    return ("after", worker)\n',
    )
    settings, _ = build_settings({"config": path})
    assert set(settings.hooks) == {"after_fork"}
    assert settings.hooks["after_fork"](5) == ("after", 5)
    assert settings == Settings(app="a.py", config=path)


def test_read_config_file_returns_values_hooks_and_warnings(tmp_path):
    path = config_file(
        tmp_path,
        "import os\n"
        "from pathlib import Path\n"
        "_private = 1\n"
        "def helper():\n"
        "    return 1\n"
        "class Thing:\n"
        "    pass\n"
        "wokers = 3\n"
        "workers = 2\n"
        "def worker_exit(worker):\n"
        "    pass\n",
    )
    values, hooks, warnings = read_config_file(path)
    assert values == {"workers": 2}
    assert set(hooks) == {"worker_exit"}
    # Imports, helpers, classes and _names are not settings; a typo is reported.
    assert warnings == [f"config file {path}: unknown setting 'wokers' ignored"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("workers = -1\n", "workers must be a whole number >= 0, 'auto' or MIN:MAX, got -1"),
        ("term = 'slow'\n", "term must be 'graceful' or 'quick', got 'slow'"),
        ("after_fork = 3\n", "after_fork must be a function"),
        ("config = 'other.py'\n", "'config' cannot be set in a config file"),
        ("1 / 0\n", "ZeroDivisionError: division by zero"),
        ("raise SystemExit(3)\n", "SystemExit: 3"),
        ("workers = (\n", "SyntaxError: "),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, source, message):
    path = config_file(tmp_path, source)
    with pytest.raises(StartupError) as caught:
        read_config_file(path)
    text = str(caught.value)
    assert text.startswith(f"config file {path}: {message}")
    assert "\n" not in text


def test_a_syntax_error_says_its_line(tmp_path):
    path = config_file(tmp_path, "workers = 2\n\nworkers = = 3\n")
    with pytest.raises(StartupError, match=r"SyntaxError: .* \(line 3\)$"):
        read_config_file(path)


def test_a_missing_or_unreadable_config_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(StartupError, match=rf"^config file not found: {missing}$"):
        read_config_file(missing)
    with pytest.raises(StartupError, match=rf"^config file is a directory: {tmp_path}$"):
        read_config_file(str(tmp_path))


def test_the_file_runs_with_its_own_path_as_file(tmp_path):
    path = config_file(tmp_path, "import os\napp = os.path.basename(__file__)\n")
    values, _, warnings = read_config_file(path)
    assert values == {"app": "conf.py"}
    assert warnings == []
