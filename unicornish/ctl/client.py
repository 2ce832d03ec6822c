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

import json
import os
import socket
import sys
import time
from typing import Any, NamedTuple

import psutil

from unicornish.app import describe
from unicornish.errors import UsageError
from unicornish.host import pidfile
from unicornish.metrics.procstats import process_stats
from unicornish.protocol import COMMANDS_HELP, MAX_LINE

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4

CONTROL_ENV = "UNICORNISH_CONTROL"
REPLY_TIMEOUT = 10.0
MAX_REPLY = 64 * 1024 * 1024

STATUS_USAGE = "usage: unicornish status [--control PATH | --pid FILE] [--json] [--ready]"
CTL_USAGE = f"usage: unicornish ctl [--control PATH] COMMAND [ARG]  ({COMMANDS_HELP})"

STATUS_HELP = f"""\
{STATUS_USAGE}

Show a running master and its workers: pid, age, state, tasks, memory, CPU.

options:
  --control PATH  ask the master on its control socket (default: ${CONTROL_ENV})
  --pid FILE      without a control socket: read the process table from the
                  master the pid file names (state and tasks are then unknown)
  --json          one JSON object instead of the table
  --ready         for readiness probes: print `ready` or `not ready: REASON`
                  (booting, reloading, draining, stopping...) and exit 0 or 1;
                  needs the control socket (a pid file cannot tell)
  -h, --help      show this help and exit

exit codes:
  0  running; with --ready: ready
  1  with --ready: running, but not ready
  2  bad command line
  3  not running: no control socket, nothing listening on it, no live master
     named by the pid file
  4  unknown: the socket is not ours to talk to (permission denied), or the
     master did not answer in time; with --ready, only a pid file was there to read
"""

CTL_HELP = f"""\
usage: unicornish ctl [--control PATH] COMMAND [ARG]

Send one command to a running master over its control socket; print its JSON reply.

commands:
  status          the master and its workers
  scale N         keep exactly N workers (N >= 0)
  ttin, ttou      one more / one fewer worker
  reload          re-read the config file and reload the app (as HUP)
  reopen          reopen the log file (as USR1)
  stop [--quick]  graceful stop (as QUIT), or a quick stop (as INT)
  upgrade         re-exec a new master (as USR2)
  metrics         print the master's Prometheus metrics (the text of /metrics)
  refork          make the busiest ready worker the mold new workers fork from

options:
  --control PATH  the master's control socket (default: ${CONTROL_ENV})
  -h, --help      show this help and exit

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
        sock.settimeout(timeout)
        try:
            sock.connect(path)
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
        try:
            sock.sendall((json.dumps(payload) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (another user, too many clients): its reply waits below
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
    header = ("NR", "PID", "AGE", "STATE", "TASKS", "TASK_AGE", "RSS", "USS", "CPU")
    rows = [header]
    for w in status["workers"]:
        rows.append(
            (
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
        )
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


# -- the commands ----------------------------------------------------------------------


def _take_value(args: list[str], i: int, name: str) -> tuple[str, int]:
    arg = args[i]
    if arg.startswith(name + "="):
        value = arg[len(name) + 1 :]
    elif i + 1 < len(args):
        value = args[i + 1]
        i += 1
    else:
        raise UsageError(f"argument {name}: expected one argument")
    if not value:
        raise UsageError(f"argument {name}: expected a non-empty value")
    return value, i


class StatusArgs(NamedTuple):
    control: str | None
    pid: str | None
    as_json: bool
    ready: bool = False


def parse_status(args: list[str]) -> StatusArgs:
    control = pid = None
    as_json = ready = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            raise HelpAsked(STATUS_HELP)
        if arg == "--json":
            as_json = True
        elif arg == "--ready":
            ready = True
        elif arg == "--control" or arg.startswith("--control="):
            control, i = _take_value(args, i, "--control")
        elif arg == "--pid" or arg.startswith("--pid="):
            pid, i = _take_value(args, i, "--pid")
        else:
            raise UsageError(f"status: unrecognized argument {arg!r}; {STATUS_USAGE}")
        i += 1
    if control is None and pid is None:
        control = os.environ.get(CONTROL_ENV) or None
    if control is None and pid is None:
        raise UsageError(f"status needs --control PATH or --pid FILE (or ${CONTROL_ENV})")
    return StatusArgs(control, pid, as_json, ready)


def status_main(args: list[str]) -> int:
    control, pid, as_json, ready = parse_status(args)
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


def parse_ctl(args: list[str]) -> tuple[str, dict[str, Any]]:
    control = None
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):  # no command takes it as an argument
            raise HelpAsked(CTL_HELP)
        if not words and (arg == "--control" or arg.startswith("--control=")):
            control, i = _take_value(args, i, "--control")
        elif not words and arg.startswith("-"):
            raise UsageError(f"ctl: unrecognized argument {arg!r}; {CTL_USAGE}")
        else:
            words.append(arg)
        i += 1
    if control is None:
        control = os.environ.get(CONTROL_ENV) or None
    if control is None:
        raise UsageError(f"ctl needs --control PATH (or ${CONTROL_ENV})")
    if not words:
        raise UsageError(f"ctl needs a COMMAND; {CTL_USAGE}")
    command, rest = words[0], words[1:]
    payload: dict[str, Any] = {"command": command}
    if command == "scale":
        if len(rest) != 1 or not rest[0].isdigit():
            raise UsageError("ctl scale needs one whole number N >= 0")
        payload["workers"] = int(rest[0])
    elif command == "stop":
        if rest not in ([], ["--quick"]):
            raise UsageError(f"ctl stop takes only --quick, got {' '.join(rest)!r}")
        payload["quick"] = bool(rest)
    elif command in ("status", "ttin", "ttou", "reload", "reopen", "upgrade", "metrics", "refork"):
        if rest:
            raise UsageError(f"ctl {command} takes no argument, got {' '.join(rest)!r}")
    else:
        raise UsageError(f"ctl: unknown command {command!r}; {CTL_USAGE}")
    return control, payload


def ctl_main(args: list[str]) -> int:
    control, payload = parse_ctl(args)
    try:
        reply = request(control, payload)
    except NoAnswer as exc:
        sys.stderr.write(f"unicornish: {exc}\n")
        return exc.code
    text = reply.get("text")
    if payload["command"] == "metrics" and reply.get("ok") is True and isinstance(text, str):
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
