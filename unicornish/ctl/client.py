"""`unicornish status` and `unicornish ctl`: talking to a running master.

    unicornish status [--control PATH | --pid FILE] [--json] [--ready]
    unicornish ctl [--control PATH] COMMAND [ARG]

Exit codes, after the LSB convention for status:
    0  running (status) / ready (status --ready) / the master said ok (ctl)
    1  not ready (status --ready) / the master answered with an error (ctl)
    2  bad command line
    3  not running: no control socket, nothing listening on it, no live master
       named by the pid file (status) / no master answers (ctl)
    4  unknown: the socket is not ours to talk to (permission denied), or the
       master did not answer in time (status)

`--control` defaults to $UNICORNISH_CONTROL when that is set.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from typing import Any, NamedTuple, NoReturn

import psutil

from unicornish.app import describe
from unicornish.ctl import commands
from unicornish.ctl.commands import MAX_LINE
from unicornish.errors import UsageError
from unicornish.host import pidfile
from unicornish.metrics.procstats import process_stats

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4

CONTROL_ENV = "UNICORNISH_CONTROL"
REPLY_TIMEOUT = 10.0
MAX_REPLY = 64 * 1024 * 1024

STATUS_USAGE = "unicornish status [--control PATH | --pid FILE] [--json] [--ready]"
CTL_USAGE = "unicornish ctl [--control PATH] COMMAND [ARG]"

STATUS_EXIT_CODES = """\
exit codes:
  0  running; with --ready: ready
  1  with --ready: running, but not ready
  2  bad command line
  3  not running: no control socket, nothing listening on it, no live master
     named by the pid file
  4  unknown: the socket is not ours to talk to (permission denied), or the
     master did not answer in time; with --ready, only a pid file was there to read
"""

CTL_EXIT_CODES = """\
exit codes:
  0  the master said ok
  1  the master answered with an error
  2  bad command line
  3  not running: no master answers on the socket
  4  unknown: the socket is not ours to talk to (permission denied), or the
     master did not answer in time
"""


class HelpAsked(Exception):
    """-h/--help: the text goes to stdout and the exit code is 0, unlike a usage error."""


class NoAnswer(Exception):
    def __init__(self, message: str, code: int = EXIT_NOT_RUNNING) -> None:
        super().__init__(message)
        self.code = code


# -- talking to the master -------------------------------------------------------


def request(path: str, payload: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Send one request line, return the master's reply. Raises NoAnswer."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            _connect(sock, path, timeout)
        except FileNotFoundError:
            raise NoAnswer(f"not running: no control socket at {path}") from None
        except ConnectionRefusedError:
            raise NoAnswer(f"not running: nothing answers on {path} (a stale socket)") from None
        except PermissionError:
            raise NoAnswer(
                f"cannot talk to {path}: permission denied (only root and the master's user may)",
                EXIT_UNKNOWN,
            ) from None
        except TimeoutError:
            raise NoAnswer(f"no answer from {path} within {timeout:g}s", EXIT_UNKNOWN) from None
        except OSError as exc:
            why = exc.strerror or exc
            raise NoAnswer(f"not running: cannot connect to {path}: {why}") from None
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.sendall((json.dumps(payload) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (another user): its reply waits below
        except OSError as exc:
            raise NoAnswer(f"the master at {path} hung up: {exc.strerror or exc}") from None
        data = bytearray()
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"no answer from {path} within {timeout:g}s", EXIT_UNKNOWN)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise NoAnswer(f"the master at {path} hung up: {exc.strerror or exc}") from None
            if not chunk:
                raise NoAnswer(f"the master at {path} closed the connection without an answer")
            data += chunk
            if len(data) > MAX_REPLY:
                raise NoAnswer(f"the answer from {path} is too long", EXIT_UNKNOWN)
    finally:
        sock.close()
    line = bytes(data).split(b"\n", 1)[0]
    try:
        reply = json.loads(line)
    except ValueError:
        raise NoAnswer(f"{path} answered something that is not JSON", EXIT_UNKNOWN) from None
    if not isinstance(reply, dict):
        raise NoAnswer(f"{path} answered something that is not a JSON object", EXIT_UNKNOWN)
    return reply


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """connect(), waiting up to `timeout` for room in the master's backlog: with
    hundreds of clients at once the backlog fills, and a blocking connect() on a
    unix socket sleeps until the master accepts one (SO_SNDTIMEO bounds the
    sleep), where a non-blocking one would fail at once with EAGAIN."""
    sock.settimeout(None)
    seconds = max(timeout, 0.001)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_SNDTIMEO,
        struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000)),
    )
    try:
        sock.connect(path)
    except BlockingIOError:  # still no room when SO_SNDTIMEO ran out
        raise TimeoutError from None


# -- what psutil sees from a pid file ----------------------------------------------


def status_from_pid_file(path: str) -> dict[str, Any]:
    """The master named by the pid file and its workers, as the process table shows
    them. Raises NoAnswer when no live master is there."""
    pid = pidfile.read_pid(path)
    if pid is None:
        if os.path.lexists(path):
            raise NoAnswer(f"not running: pid file {path} names no pid")
        raise NoAnswer(f"not running: no pid file {path}")
    if not pidfile.is_unicornish_master(pid):
        raise NoAnswer(f"not running: pid file {path} names pid {pid}, not a live master")
    now = time.time()
    try:
        master = psutil.Process(pid)
        created = master.create_time()
        children = master.children()
    except psutil.NoSuchProcess:
        raise NoAnswer(f"not running: pid {pid} (from {path}) is gone") from None
    except psutil.AccessDenied:
        raise NoAnswer(f"cannot inspect pid {pid}: permission denied", EXIT_UNKNOWN) from None
    master_sid = _sid(pid)
    workers = [entry for child in children if (entry := _worker_entry(child, master_sid, now))]
    workers.sort(key=lambda w: (w["nr"], -w["age"]))
    return {
        "master": {
            "pid": pid,
            "uptime": round(now - created, 3),
            "app": _app_from_title(master),
            "workers_wanted": None,
            "workers_running": len(workers),
            # In the master's memory only (its bounds, its workers' scoreboards, readiness).
            "workers_min": None,
            "workers_max": None,
            "workers_idle": None,
            "ready": None,
            "not_ready": None,
        },
        "workers": workers,
    }


def _worker_entry(child: psutil.Process, master_sid: int | None, now: float) -> dict[str, Any]:
    """A worker as the process table shows it; {} for any other child."""
    try:
        name = child.name()
        if child.status() == psutil.STATUS_ZOMBIE or not name.startswith("worker["):
            return {}
        # An orphan that a worker forked inherits its title and, under
        # --subreaper or as pid 1, the master as parent; only a worker leads
        # a process group of its own within the master's session.
        if _pgid(child.pid) != child.pid or _sid(child.pid) != master_sid:
            return {}
        nr = int(name[7:-1])
        age = now - child.create_time()
    except (psutil.Error, ValueError):
        return {}
    entry: dict[str, Any] = {
        "nr": nr,
        "pid": child.pid,
        "age": round(age, 3),
        "state": None,
        "tasks": None,
        "connections": None,
        "task_age": None,
    }
    entry.update(process_stats(child.pid, now))
    return entry


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _app_from_title(proc: psutil.Process) -> str | None:
    """`unicornish master [(old)] APP [ADDRESS]` -> APP's short name, as the
    control socket's `app` shows it (the title has the app as given)."""
    try:
        words = " ".join(proc.cmdline()).split()
    except psutil.Error:
        return None
    if len(words) >= 3 and words[:2] == ["unicornish", "master"]:
        rest = words[2:]
        if rest[0] == "(old)":
            rest = rest[1:]
        return describe(rest[0]) if rest else None
    return None


# -- showing it ---------------------------------------------------------------------


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    if value < 86400:
        return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"
    return f"{int(value // 86400)}d{int(value % 86400 // 3600):02d}h"


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 1048576:.1f}M"


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)


def _readiness(master: dict[str, Any]) -> str:
    if master.get("ready") is True:
        return ", ready"
    if master.get("ready") is False:
        return f", not ready ({master.get('not_ready')})"
    return ""  # from a pid file, or a master too old to say


def _adaptive(master: dict[str, Any]) -> str:
    """`(2 to 8), 1 idle` for an adaptive count; nothing for a fixed one."""
    low, high = master.get("workers_min"), master.get("workers_max")
    if low is None or high is None or low == high:
        return ""
    return f" ({low} to {high}), {_plain(master.get('workers_idle'))} idle"


def format_table(status: dict[str, Any], source: str) -> str:
    m = status["master"]
    wanted = m.get("workers_wanted")
    lines = [
        f"unicornish master pid={m['pid']} app={_plain(m.get('app'))} "
        f"uptime={_seconds(m.get('uptime'))} "
        f"workers: {m.get('workers_running')} running, {_plain(wanted)} wanted"
        + _adaptive(m)
        + _readiness(m),
    ]
    if source:
        lines.append(source)
    header: tuple[str, ...] = (
        "NR",
        "PID",
        "AGE",
        "STATE",
        "TASKS",
        "TASK_AGE",
        "RSS",
        "USS",
        "CPU",
    )
    # HTTP workers (--wsgi) with open client connections: a column for them.
    conns = any(w.get("connections") for w in status["workers"])
    if conns:
        header = header[:5] + ("CONNS",) + header[5:]
    rows = [header]
    for w in status["workers"]:
        row: tuple[str, ...] = (
            str(w["nr"]),
            str(w["pid"]),
            _seconds(w.get("age")),
            _plain(w.get("state")),
            _plain(w.get("tasks")),
            _seconds(w.get("task_age")),
            _mib(w.get("rss")),
            _mib(w.get("uss")),
            "-" if w.get("cpu") is None else f"{w['cpu']:.1f}%",
        )
        if conns:
            row = row[:5] + (_plain(w.get("connections")),) + row[5:]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left = {3}  # STATE reads better left-aligned
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    if not status["workers"]:
        lines.append("(no workers)")
    return "\n".join(lines) + "\n"


# -- the command lines ------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with its errors and help handed back to main() (one line on
    stderr and exit 2; the help on stdout and exit 0) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog.removeprefix('unicornish ')}: {message}")

    def print_help(self, file: Any = None) -> NoReturn:
        raise HelpAsked(self.format_help())

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A sub-command names its own unknown words (`ctl stop: ... --now`); the
        # top level would only say `ctl: ...`.
        found, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return found, extras


def _path(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("expected a non-empty value")
    return text


def _parser(prog: str, usage: str, description: str, epilog: str) -> Parser:
    return Parser(
        prog=prog,
        usage=usage,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def status_parser() -> Parser:
    parser = _parser(
        "unicornish status",
        STATUS_USAGE,
        "Show a running master and its workers: pid, age, state, tasks, memory, CPU.",
        STATUS_EXIT_CODES,
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=_path,
        help=f"ask the master on its control socket (default: ${CONTROL_ENV})",
    )
    parser.add_argument(
        "--pid",
        metavar="FILE",
        type=_path,
        help="without a control socket: read the process table from the master the pid "
        "file names (state and tasks are then unknown)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument(
        "--ready",
        action="store_true",
        help="for readiness probes: print `ready` or `not ready: REASON` (booting, "
        "reloading, draining, stopping...) and exit 0 or 1; needs the control socket "
        "(a pid file cannot tell)",
    )
    return parser


def _word(param: commands.Param) -> Any:
    def convert(text: str) -> Any:
        try:
            return param.from_word(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def ctl_parser() -> Parser:
    """`ctl`'s sub-commands, from the declarations in ctl/commands.py."""
    parser = _parser(
        "unicornish ctl",
        CTL_USAGE,
        "Send one command to a running master over its control socket; print its JSON reply.\n\n"
        "commands:\n" + "\n".join(commands.help_lines()),
        CTL_EXIT_CODES,
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=_path,
        help=f"the master's control socket (default: ${CONTROL_ENV})",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help=argparse.SUPPRESS, parser_class=Parser
    )
    for command in commands.COMMANDS:
        one = sub.add_parser(
            command.name,
            prog=f"unicornish ctl {command.name}",
            usage=f"unicornish ctl [--control PATH] {command.synopsis}",
            description=command.help,
            allow_abbrev=False,
        )
        for param in command.params:
            if param.is_flag:
                one.add_argument(param.word, dest=param.key, action="store_true", help=param.help)
            else:
                one.add_argument(param.key, metavar=param.word, type=_word(param), help=param.help)
    return parser


class StatusArgs(NamedTuple):
    """What `unicornish status ARGS` asks."""

    control: str | None
    pid: str | None
    as_json: bool
    ready: bool = False


def status_args(args: list[str]) -> StatusArgs:
    found = status_parser().parse_args(args)
    control, pid = found.control, found.pid
    if control is None and pid is None:
        control = os.environ.get(CONTROL_ENV) or None
    if control is None and pid is None:
        raise UsageError(f"status needs --control PATH or --pid FILE (or ${CONTROL_ENV})")
    return StatusArgs(control, pid, found.json, found.ready)


def ctl_request(args: list[str]) -> tuple[str, dict[str, Any]]:
    """The control socket and the request `ctl ARGS` sends."""
    found = ctl_parser().parse_args(args)
    control = found.control or os.environ.get(CONTROL_ENV) or None
    if control is None:
        raise UsageError(f"ctl needs --control PATH (or ${CONTROL_ENV})")
    if found.command is None:
        raise UsageError(f"ctl needs a COMMAND ({commands.SYNOPSIS}); usage: {CTL_USAGE}")
    command = commands.BY_NAME[found.command]
    return control, command.request({p.key: getattr(found, p.key) for p in command.params})


def status_main(args: list[str]) -> int:
    control, pid, as_json, ready = status_args(args)
    status: dict[str, Any] | None = None
    source = ""
    problems: list[NoAnswer] = []
    if control is not None:
        try:
            reply = request(control, {"command": "status"})
        except NoAnswer as exc:
            problems.append(exc)
        else:
            if not reply.get("ok"):
                problems.append(NoAnswer(f"{control}: {reply.get('error')}", EXIT_UNKNOWN))
            else:
                status = {"master": reply.get("master"), "workers": reply.get("workers", [])}
    if status is None and pid is not None:
        try:
            status = status_from_pid_file(pid)
            source = f"(from pid file {pid}: no control socket, so state and tasks are unknown)"
        except NoAnswer as exc:
            problems.append(exc)
    if status is None:
        for problem in problems:
            sys.stderr.write(f"unicornish: {problem}\n")
        codes = [p.code for p in problems]
        return EXIT_UNKNOWN if EXIT_UNKNOWN in codes else EXIT_NOT_RUNNING
    if ready:
        return report_ready(status, bool(source), as_json)
    if as_json:
        sys.stdout.write(json.dumps(status) + "\n")
    else:
        sys.stdout.write(format_table(status, source))
    return EXIT_OK


def report_ready(status: dict[str, Any], from_pid_file: bool, as_json: bool) -> int:
    """`status --ready`: 0 ready, 1 not ready, 4 when it cannot be known.

    Readiness lives in the master's memory (which workers reported ready, a
    drain, a reload): a pid file shows processes, not that. So from a pid file
    the answer is "unknown", never a guess a load balancer would act on.
    """
    master = status.get("master") or {}
    if from_pid_file:
        sys.stderr.write(
            f"unicornish: unknown: master pid={master.get('pid')} runs, but only its "
            "control socket can say whether it is ready (use --control)\n"
        )
        return EXIT_UNKNOWN
    if not isinstance(master.get("ready"), bool):
        sys.stderr.write("unicornish: unknown: this master does not report readiness\n")
        return EXIT_UNKNOWN
    if as_json:
        sys.stdout.write(json.dumps(status) + "\n")
    elif master["ready"]:
        sys.stdout.write("ready\n")
    else:
        sys.stdout.write(f"not ready: {master.get('not_ready')}\n")
    return EXIT_OK if master["ready"] else EXIT_ERROR


def ctl_main(args: list[str]) -> int:
    control, payload = ctl_request(args)
    try:
        reply = request(control, payload)
    except NoAnswer as exc:
        sys.stderr.write(f"unicornish: {exc}\n")
        return exc.code
    text = reply.get("text")
    if (
        commands.BY_NAME[payload["command"]].reply_is_text
        and reply.get("ok") is True
        and isinstance(text, str)
    ):
        sys.stdout.write(text)  # raw, as /metrics serves it (for promtool, grep, a file)
        return EXIT_OK
    sys.stdout.write(json.dumps(reply) + "\n")
    return EXIT_OK if reply.get("ok") is True else EXIT_ERROR


def main(args: list[str]) -> int:
    try:
        if args[0] == "status":
            return status_main(args[1:])
        return ctl_main(args[1:])
    except HelpAsked as exc:
        sys.stdout.write(str(exc))
        return EXIT_OK
    except UsageError as exc:
        sys.stderr.write(f"unicornish: error: {exc}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_ERROR


__all__ = ["main", "request", "status_from_pid_file", "format_table", "MAX_LINE"]
