"""Bad input: one clear line on stderr, exit 2 (usage) or 1 (runtime), no traceback,
no worker; or an error reply, or one warning while the master runs on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, loop_app, one_error_line, run_cli, wait_until, worker_children, write_app
from reliability import normalise

GOOD = "def worker_start(worker):\n    pass\n"


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
    one_error_line(run_cli(*args, cwd=tmp_path), 2, *words)


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
    one_error_line(result, 1, *words)


def test_unknown_module_exits_1(tmp_path):
    one_error_line(run_cli("--app", "no_such_pkg.tasks", cwd=tmp_path), 1, "no_such_pkg")


def test_unreadable_app(tmp_path):
    one_error_line(run_cli("--app", str(tmp_path), cwd=tmp_path), 1, "directory")


@pytest.mark.parametrize(
    "line, words", [('workers = "autox"', ["workers", "'auto'"]), ("worker_memory = 0", ["> 0"])]
)
def test_bad_auto_workers_in_config_file_exit_1(tmp_path, line, words):
    # Like every bad value in a config file: what it names is wrong, exit 1.
    (tmp_path / "app.py").write_text(GOOD)
    (tmp_path / "c.py").write_text(f'app = "app.py"\n{line}\n')
    one_error_line(run_cli("-c", "c.py", cwd=tmp_path), 1, "c.py", *words)


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


# -- the bad-input catalogue (issue 7) ---------------------------------------------------
#
# The command line, config files, apps, the environment (UNICORNISH_FD,
# LISTEN_FDS/LISTEN_PID, NOTIFY_SOCKET), pid files and control socket requests.
# Each gives one clear line and a non-zero exit, or an error reply, or (where
# the input is not ours to refuse) one warning line while the master runs on;
# nothing that was running is lost. `CASES` is also what `make soak` runs to
# write the table in docs/RELIABILITY.md (tests/chaos/test_record.py).


# An app that runs, for the cases that start one.
LOOP = loop_app()


@dataclass
class Outcome:
    result: str  # "exit N", "runs" (a warning, then it works), "reply"
    line: str  # the one line the user sees (stderr, log warning, or JSON reply)
    stderr_lines: int = 1


@dataclass
class Case:
    id: str
    group: str
    given: str  # what the user did, for the table
    run: Callable[[Path], Outcome]
    expect: str  # "exit 1", "exit 2", "runs", "reply"
    words: tuple[str, ...]


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    if isinstance(text, str):
        return write_app(tmp, text, name)
    path = tmp / name
    path.write_bytes(text)
    return path


def _exit_outcome(done: subprocess.CompletedProcess[str]) -> Outcome:
    lines = done.stderr.strip().splitlines()
    return Outcome(f"exit {done.returncode}", lines[-1] if lines else "", len(lines))


def cli(*args: str, env: dict[str, str] | None = None, files: dict[str, Any] | None = None):
    """A case that runs `unicornish ARGS` in the case's directory to its end."""

    def run(tmp: Path) -> Outcome:
        _write(tmp, "app.py", LOOP)
        for name, text in (files or {}).items():
            if text is None:
                (tmp / name).mkdir()
            else:
                _write(tmp, name, text)
        return _exit_outcome(run_cli(*args, cwd=tmp, env=env, timeout=30))

    return run


def _start_master(tmp: Path, args: list[str], env: dict[str, str] | None = None):
    full_env = dict(os.environ)
    full_env.pop("NOTIFY_SOCKET", None)
    full_env.update(env or {})
    err = open(tmp / "master.err", "wb")
    proc = subprocess.Popen(
        [str(BIN), *args],
        cwd=str(tmp),
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )
    err.close()
    return proc


def _stop_master(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def runs_with(*args: str, env: dict[str, str] | None = None, setup: Any = None, look: str = ""):
    """A case where the master must start and run, saying one line about the input."""

    def run(tmp: Path) -> Outcome:
        _write(tmp, "app.py", LOOP)
        extra = setup(tmp) if setup else []
        proc = _start_master(tmp, [*args, *extra], env)
        try:
            err = tmp / "master.err"
            wait_until(lambda: len(worker_children(proc.pid)) == 1, 15, "a worker")
            wait_until(lambda: look in err.read_text(), 5, f"{look!r} in the log")
            assert proc.poll() is None
            lines = [ln for ln in err.read_text().splitlines() if look in ln]
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(10) == 0
            line = lines[0].split("] ", 1)[-1] if lines else ""
            return Outcome("runs", line, len(lines))
        finally:
            _stop_master(proc)

    return run


# -- environment helpers ----------------------------------------------------------------


def with_fd(kind: str, name: str = "UNICORNISH_FD"):
    """Start with an open fd of some kind passed in the environment."""

    def run(tmp: Path) -> Outcome:
        _write(tmp, "app.py", LOOP)
        keep: Any
        if kind == "file":
            keep = open(tmp / "file", "w")
            fd = keep.fileno()
        else:
            keep = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            keep.bind(("127.0.0.1", 0))  # bound, not listening
            fd = keep.fileno()
        try:
            env = dict(os.environ, **{name: str(fd)})
            done = subprocess.run(
                [str(BIN), "--app", "app.py"],
                cwd=str(tmp),
                env=env,
                pass_fds=(fd,),
                capture_output=True,
                text=True,
                timeout=30,
                start_new_session=True,
            )
        finally:
            keep.close()
        return _exit_outcome(done)

    return run


def listen_fds_for_self(count: str):
    """LISTEN_PID set to the master's own pid (systemd does that), LISTEN_FDS=count."""

    def run(tmp: Path) -> Outcome:
        _write(tmp, "app.py", LOOP)
        script = f'LISTEN_FDS={count} LISTEN_PID=$$ exec "$0" --app app.py'
        done = subprocess.run(
            ["sh", "-c", script, str(BIN)],
            cwd=str(tmp),
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
        )
        return _exit_outcome(done)

    return run


# -- pid file helpers ------------------------------------------------------------------------


def pid_file_read_only_fs(tmp: Path) -> Outcome:
    """The pid file's directory is on a read-only filesystem (EROFS: root cannot write either)."""
    _write(tmp, "app.py", LOOP)
    mount = tmp / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        return _exit_outcome(run_cli("--app", "app.py", "--pid", str(mount / "u.pid"), cwd=tmp))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def pid_file_of_live_master(tmp: Path) -> Outcome:
    """A second master with the first one's pid file: refused; the first runs on untouched."""
    _write(tmp, "app.py", LOOP)
    first = _start_master(tmp, ["--app", "app.py", "--workers", "2", "--pid", "u.pid"])
    try:
        wait_until(lambda: len(worker_children(first.pid)) == 2, 15, "2 workers")
        wait_until(lambda: (tmp / "u.pid").exists(), 5, "the pid file")
        workers = sorted(worker_children(first.pid))
        outcome = _exit_outcome(run_cli("--app", "app.py", "--pid", "u.pid", cwd=tmp))
        assert (tmp / "u.pid").read_text().strip() == str(first.pid)
        assert sorted(worker_children(first.pid)) == workers and first.poll() is None
        return outcome
    finally:
        _stop_master(first)


def symlinked_pid_file(tmp: Path) -> list[str]:
    victim = tmp / "victim.txt"
    victim.write_text("precious\n")
    (tmp / "u.pid").symlink_to(victim)
    return ["--pid", "u.pid"]


def garbage_pid_file(tmp: Path) -> list[str]:
    (tmp / "u.pid").write_bytes(b"\x00\xffnot a pid\n")
    return ["--pid", "u.pid"]


CASES: list[Case] = [
    # command line
    Case("timeout-zero", "command line", "`--timeout 0`", cli("--app", "app.py", "--timeout", "0"),
         "exit 2", ("--timeout", "> 0")),
    Case("max-tasks-negative", "command line", "`--max-tasks -5`",
         cli("--app", "app.py", "--max-tasks", "-5"), "exit 2", ("--max-tasks",)),
    Case("max-memory-word", "command line", "`--max-memory abc`",
         cli("--app", "app.py", "--max-memory", "abc"), "exit 2", ("--max-memory",)),
    Case("term-unknown", "command line", "`--term sometimes`",
         cli("--app", "app.py", "--term", "sometimes"), "exit 2", ("--term", "graceful")),
    Case("give-up-negative", "command line", "`--give-up-after -1`",
         cli("--app", "app.py", "--give-up-after", "-1"), "exit 2", ("--give-up-after",)),
    Case("app-empty", "command line", "`--app ''`", cli("--app", ""), "exit 2", ("--app",)),
    Case("user-unknown", "command line", "`--user no_such_user_xyz`",
         cli("--app", "app.py", "--user", "no_such_user_xyz"), "exit 1", ("no such user",)),
    Case("log-file-missing-dir", "command line", "`--log-file /nonexistent/x.log`",
         cli("--app", "app.py", "--log-file", "/nonexistent/x.log"), "exit 1",
         ("cannot open log file", "No such file")),
    Case("log-file-is-dir", "command line", "`--log-file` names a directory",
         cli("--app", "app.py", "--log-file", "."), "exit 1", ("Is a directory",)),
    Case("control-missing-dir", "command line", "`--control /nonexistent/ctl.sock`",
         cli("--app", "app.py", "--control", "/nonexistent/ctl.sock"), "exit 1",
         ("control socket directory does not exist",)),
    Case("control-is-file", "command line", "`--control` names a regular file",
         cli("--app", "app.py", "--control", "app.py"), "exit 1", ("not a socket",)),
    Case("listen-unix-empty", "command line", "`--listen unix:`",
         cli("--app", "app.py", "--listen", "unix:"), "exit 2", ("--listen", "path")),
    # config file
    Case("config-bad-type", "config file", '`workers = "many"`',
         cli("-c", "c.py", "--app", "app.py", files={"c.py": 'workers = "many"\n'}), "exit 1",
         ("c.py", "workers")),
    Case("config-listen-number", "config file", "`listen = 5`",
         cli("-c", "c.py", "--app", "app.py", files={"c.py": "listen = 5\n"}), "exit 1",
         ("listen", "list of strings")),
    Case("config-hook-not-function", "config file", "`after_fork = 3`",
         cli("-c", "c.py", "--app", "app.py", files={"c.py": "after_fork = 3\n"}), "exit 1",
         ("after_fork must be a function",)),
    Case("config-no-app", "config file", "a config without `app`, no `--app`",
         cli("-c", "c.py", files={"c.py": "workers = 2\n"}), "exit 1", ("no app",)),
    Case("config-not-utf8", "config file", "a config file of binary garbage",
         cli("-c", "c.py", "--app", "app.py", files={"c.py": b"\xff\xfe\x00junk"}), "exit 1",
         ("c.py", "SyntaxError", "null bytes")),
    Case("config-is-dir", "config file", "`-c` names a directory",
         cli("-c", "cfg", "--app", "app.py", files={"cfg": None}), "exit 1", ("directory",)),
    Case("config-raises", "config file", "a config that raises",
         cli("-c", "c.py", "--app", "app.py", files={"c.py": "raise KeyError('DB_URL')\n"}),
         "exit 1", ("KeyError", "DB_URL")),
    Case("config-sets-config", "config file", "a config that sets `config`",
         cli("-c", "c.py", "--app", "app.py", files={"c.py": "config = 'other.py'\n"}), "exit 1",
         ("cannot be set",)),
    # app
    Case("app-no-argument", "app", "`def worker_start():` (no argument)",
         cli("--app", "a.py", files={"a.py": "def worker_start():\n    pass\n"}), "exit 1",
         ("worker_start", "one argument")),
    Case("app-hook-two-arguments", "app", "`def after_fork(worker, extra):`",
         cli("--app", "a.py", files={"a.py": LOOP + "def after_fork(worker, extra):\n    pass\n"}),
         "exit 1", ("after_fork", "one argument")),
    Case("app-exits-on-import", "app", "an app that calls `sys.exit(3)` on import",
         cli("--app", "a.py", files={"a.py": "import sys\nsys.exit(3)\n"}), "exit 1",
         ("SystemExit",)),
    Case("app-binary", "app", "an app file of binary garbage",
         cli("--app", "a.py", files={"a.py": b"\xff\xfe\x00junk"}), "exit 1", ("SyntaxError",)),
    Case("app-bad-dotted", "app", "`--app foo..bar`", cli("--app", "foo..bar"), "exit 1",
         ("dotted module name",)),
    Case("app-preload-raises", "app", "`--preload` with an app that raises on import",
         cli("--app", "a.py", "--preload", files={"a.py": "1/0\n"}), "exit 1",
         ("ZeroDivisionError",)),
    # environment
    Case("fd-env-garbage", "environment", "`UNICORNISH_FD=garbage`",
         cli("--app", "app.py", env={"UNICORNISH_FD": "garbage"}), "exit 1",
         ("UNICORNISH_FD", "fd numbers")),
    Case("fd-env-stderr", "environment", "`UNICORNISH_FD=2`",
         cli("--app", "app.py", env={"UNICORNISH_FD": "2"}), "exit 1", ("fd 2",)),
    Case("fd-env-closed", "environment", "`UNICORNISH_FD=99` (not open)",
         cli("--app", "app.py", env={"UNICORNISH_FD": "99"}), "exit 1", ("fd 99 is not open",)),
    Case("fd-env-file", "environment", "`UNICORNISH_FD` naming a regular file",
         with_fd("file"), "exit 1", ("is not a socket",)),
    Case("fd-env-not-listening", "environment", "`UNICORNISH_FD` naming a socket not listening",
         with_fd("socket"), "exit 1", ("not a listening stream socket",)),
    Case("listen-fds-garbage", "environment", "`LISTEN_FDS=abc`",
         cli("--app", "app.py", env={"LISTEN_FDS": "abc", "LISTEN_PID": "1"}), "exit 1",
         ("LISTEN_FDS", "not a number")),
    Case("listen-fds-no-pid", "environment", "`LISTEN_FDS=1` without `LISTEN_PID`",
         cli("--app", "app.py", env={"LISTEN_FDS": "1"}), "exit 1", ("LISTEN_PID is not set",)),
    Case("listen-pid-garbage", "environment", "`LISTEN_FDS=1 LISTEN_PID=x`",
         cli("--app", "app.py", env={"LISTEN_FDS": "1", "LISTEN_PID": "x"}), "exit 1",
         ("LISTEN_PID='x' is not a pid",)),
    Case("listen-fds-not-open", "environment", "`LISTEN_FDS=2` for the master, fds 3-4 closed",
         listen_fds_for_self("2"), "exit 1", ("LISTEN_FDS", "fd 3")),
    Case("listen-pid-other", "environment", "`LISTEN_FDS=1 LISTEN_PID=1` (another process)",
         runs_with("--app", "app.py", env={"LISTEN_FDS": "1", "LISTEN_PID": "1"},
                   look="master process ready"), "runs", ("master process ready",)),
    Case("notify-relative", "environment", "`NOTIFY_SOCKET=relative`",
         runs_with("--app", "app.py", env={"NOTIFY_SOCKET": "relative"}, look="NOTIFY_SOCKET"),
         "runs", ("not a socket path", "notifications are off")),
    Case("notify-missing", "environment", "`NOTIFY_SOCKET=/nonexistent/notify.sock`",
         runs_with("--app", "app.py", env={"NOTIFY_SOCKET": "/nonexistent/notify.sock"},
                   look="cannot notify"), "runs", ("cannot notify systemd", "No such file")),
    # pid file
    Case("pid-dir", "pid file", "`--pid` names a directory",
         cli("--app", "app.py", "--pid", "d", files={"d": None}), "exit 1", ("directory",)),
    Case("pid-missing-dir", "pid file", "`--pid /nonexistent/u.pid`",
         cli("--app", "app.py", "--pid", "/nonexistent/u.pid"), "exit 1", ("does not exist",)),
    Case("pid-read-only", "pid file", "`--pid` on a read-only filesystem",
         pid_file_read_only_fs, "exit 1", ("not writable",)),
    Case("pid-live-master", "pid file", "`--pid` of a running master (second start)",
         pid_file_of_live_master, "exit 1", ("already running",)),
    Case("pid-garbage", "pid file", "`--pid` file holding garbage",
         runs_with("--app", "app.py", setup=garbage_pid_file, look="stale pid file"), "runs",
         ("replacing stale pid file",)),
    Case("pid-symlink", "pid file", "`--pid` is a symlink to another file",
         runs_with("--app", "app.py", setup=symlinked_pid_file, look="stale pid file"), "runs",
         ("replacing stale pid file",)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    outcome = case.run(tmp_path)
    assert outcome.result == case.expect, (outcome, case.given)
    assert outcome.stderr_lines == 1, outcome
    assert "Traceback" not in outcome.line and "(line None)" not in outcome.line
    if outcome.result.startswith("exit"):
        assert outcome.line.startswith("unicornish: error: "), outcome.line
    for word in case.words:
        assert word in outcome.line, (word, outcome.line)
    if case.id == "pid-symlink":
        assert (tmp_path / "victim.txt").read_text() == "precious\n"
        assert not (tmp_path / "u.pid").exists()  # removed on exit, as a regular file


# -- control socket requests -----------------------------------------------------------------

CONTROL_CASES: list[tuple[str, str, bytes, tuple[str, ...]]] = [
    ("json-malformed", "malformed JSON", b'{"command": "status"\n', ("not valid JSON",)),
    ("json-array", "a JSON array", b'["status"]\n', ("expected a JSON object",)),
    ("json-nested", "JSON nested 50,000 deep", b"[" * 50000 + b"\n", ("not valid JSON",)),
    ("command-unknown", "unknown command", b'{"command": "explode"}\n', ("unknown command",)),
    ("command-number", '`"command": 5`', b'{"command": 5}\n', ("must be a string",)),
    ("command-missing", "no command", b'{"workers": 3}\n', ("must be a string",)),
    ("scale-negative", '`scale` with `"workers": -1`', b'{"command": "scale", "workers": -1}\n',
     ("whole number",)),
    ("scale-string", '`scale` with `"workers": "ten"`', b'{"command": "scale", "workers": "ten"}\n',
     ("whole number",)),
    ("scale-bool", '`scale` with `"workers": true`', b'{"command": "scale", "workers": true}\n',
     ("whole number",)),
    ("scale-float", '`scale` with `"workers": 2.5`', b'{"command": "scale", "workers": 2.5}\n',
     ("whole number",)),
    ("stop-quick-string", '`stop` with `"quick": "yes"`', b'{"command": "stop", "quick": "yes"}\n',
     ("quick",)),
    ("words-extra", "`ttin now please` (words)", b"ttin now please\n", ("unexpected arguments",)),
    ("not-utf8", "binary garbage", b"\xff\xfe\x00\x01garbage\n", ("",)),
    ("oversized", "a 100 KiB request line", b"x" * (100 * 1024) + b"\n", ("too long",)),
]  # fmt: skip


class ControlMaster:
    """A running master with a control socket, for the request cases."""

    def __init__(self, tmp: Path) -> None:
        _write(tmp, "app.py", LOOP)
        self.path = str(tmp / "ctl.sock")
        self.proc = _start_master(
            tmp, ["--app", "app.py", "--workers", "2", "--control", "ctl.sock"]
        )
        wait_until(lambda: len(worker_children(self.proc.pid)) == 2, 15, "2 workers")
        wait_until(lambda: os.path.exists(self.path), 5, "the control socket")
        self.workers = sorted(worker_children(self.proc.pid))

    def ask(self, payload: bytes) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.path)
            try:
                sock.sendall(payload)
            except BrokenPipeError:
                pass  # the master may close an oversized request early, after its reply
            reader = sock.makefile("rb")
            return reader.readline().decode(errors="replace").strip()

    def intact(self) -> bool:
        return self.proc.poll() is None and sorted(worker_children(self.proc.pid)) == self.workers

    def stop(self) -> None:
        _stop_master(self.proc)


@pytest.fixture(scope="module")
def control_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlMaster]:
    master = ControlMaster(tmp_path_factory.mktemp("control"))
    yield master
    master.stop()


def control_outcome(master: ControlMaster, payload: bytes) -> Outcome:
    line = master.ask(payload)
    return Outcome("reply", line)


@pytest.mark.parametrize("case", CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES])
def test_bad_control_request(case, control_master: ControlMaster):
    _id, _given, payload, words = case
    outcome = control_outcome(control_master, payload)
    reply = json.loads(outcome.line)
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"], reply
    for word in words:
        assert word in reply["error"], reply
    # Nothing running was lost; the master still answers good requests.
    assert control_master.intact()
    assert json.loads(control_master.ask(b'{"command": "status"}\n'))["ok"] is True


def test_bad_ctl_command_line(control_master: ControlMaster):
    done = run_cli("ctl", "--control", control_master.path, "explode")
    assert done.returncode == 2, done  # refused by ctl itself: a usage error
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    done = run_cli("ctl", "--control", control_master.path, "scale", "-3")
    assert done.returncode in (1, 2), done
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1, done
    done = run_cli("ctl", "--control", control_master.path + ".nope", "status")
    assert done.returncode == 3, done
    assert control_master.intact()


def all_outcomes(tmp: Path) -> list[dict[str, str]]:
    """Every case, run for the table in docs/RELIABILITY.md."""
    rows = []
    for case in CASES:
        where = tmp / case.id
        where.mkdir()
        started = time.monotonic()
        outcome = case.run(where)
        rows.append(
            {
                "group": case.group,
                "given": case.given,
                "result": outcome.result,
                "line": normalise(outcome.line, where),
                "ok": str(outcome.result == case.expect and outcome.stderr_lines == 1),
                "seconds": f"{time.monotonic() - started:.1f}",
            }
        )
    master = ControlMaster(tmp)
    try:
        for _id, given, payload, words in CONTROL_CASES:
            outcome = control_outcome(master, payload)
            ok = json.loads(outcome.line)["ok"] is False and master.intact()
            line = outcome.line if len(outcome.line) < 200 else outcome.line[:200] + "..."
            rows.append(
                {
                    "group": "control socket",
                    "given": given,
                    "result": "error reply",
                    "line": line,
                    "ok": str(ok and all(w in outcome.line for w in words)),
                    "seconds": "",
                }
            )
    finally:
        master.stop()
    return rows
