"""The control socket's commands, each declared once.

A command is its name, its parameters (the JSON key, how `ctl` and the word
form write it, and the converter that checks the value), the line `ctl
--help` shows, what it runs on the master, and the rows of docs/reference.md's
protocol table. From this one table come the master's parsing and dispatch
(ctl/server.py), the client's argparse sub-commands and `ctl --help`
(ctl/client.py), and the check of the docs (tests/test_docs.py fails when
README or the reference disagree). Adding a command is one entry in COMMANDS
and the master's method it calls.

Protocol: one request per line, one JSON reply per line. A request is a JSON
object ({"command": "scale", "workers": 7}) or the same words `unicornish ctl`
takes (`scale 7`), for `socat`/`nc -U` users. Replies: {"ok": true, ...} or
{"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from unicornish.errors import StartupError
from unicornish.protocol import MAX_WORKERS

# A request line longer than this is refused and the connection closed.
MAX_LINE = 64 * 1024
# Long values are cut in error replies: the client sent them, it knows the rest.
SHOWN = 40


class RequestError(Exception):
    """A request the master will not run; the message goes back to the client."""


class Commands(Protocol):
    """What the control socket asks of the master: the same code as the signals."""

    @property
    def stopping(self) -> str | None: ...

    @property
    def wanted(self) -> int: ...

    def status(self) -> dict[str, Any]: ...

    def stop(self, quick: bool, why: str) -> None: ...

    def scale(self, wanted: int, why: str) -> None: ...

    def step(self, delta: int, why: str) -> None: ...

    def reload(self, why: str) -> str | None: ...

    def reopen_logs(self) -> str | None: ...

    def upgrade(self, why: str) -> tuple[int | None, str | None]: ...

    def metrics_text(self) -> str: ...

    def refork(self) -> str | None: ...


Reply = dict[str, Any]
Handler = Callable[[Commands, Mapping[str, Any], str], Reply]


def ok(**fields: Any) -> Reply:
    return {"ok": True, **fields}


def error(message: str) -> Reply:
    return {"ok": False, "error": message}


# -- converters: a parameter's value as the master receives it ----------------------------


def _shown(digits: str) -> str:
    return digits if len(digits) <= SHOWN else f"a number of {len(digits)} digits"


def worker_count(value: Any) -> int:
    """`scale`'s N: a whole number 0..MAX_WORKERS, as a JSON number or its digits."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        digits = value.strip()
        if len(digits) > 18:  # int() of thousands of digits is refused by Python itself
            raise RequestError(f"scale: at most {MAX_WORKERS} workers, got {_shown(digits)}")
        value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"scale needs a whole number of workers >= 0, got {value!r}")
    if value > MAX_WORKERS:
        raise RequestError(f"scale: at most {MAX_WORKERS} workers, got {_shown(str(value))}")
    return value


def flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise RequestError(f'bad request: "{name}" must be true or false')
        return value

    return check


def whole_number_word(text: str) -> int | str:
    """`ctl scale N`'s word: digits, sent as a number; past what int() takes, sent
    as the digits, which the master refuses as it does any N past MAX_WORKERS.
    Raises ValueError: argparse makes it a usage error."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"must be a whole number >= 0, got {text[:SHOWN]!r}")
    return int(text) if len(text) <= 18 else text


# -- the declarations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    key: str  # in the JSON request
    word: str  # in `ctl` and the word form: a metavar ("N") or a flag ("--quick")
    help: str
    check: Callable[[Any], Any]  # the value (JSON or word) -> what the master gets
    default: Any = None  # what `check` is given when the request leaves it out
    # What `ctl` makes of the word (a flag is True when given); its ValueError's
    # text is the usage error.
    from_word: Callable[[str], Any] = str

    @property
    def is_flag(self) -> bool:
        return self.word.startswith("--")

    @property
    def synopsis(self) -> str:
        return f"[{self.word}]" if self.is_flag else self.word


@dataclass(frozen=True)
class Row:
    """One row of the reference's protocol table: an example and its reply."""

    params: Mapping[str, Any]
    does: str
    reply: str


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # `ctl --help`
    run: Handler  # (the master, the checked parameters, why for the log) -> reply
    rows: tuple[Row, ...]
    params: tuple[Param, ...] = ()
    # Answered while the master stops (the read-only ones, reopen, stop).
    while_stopping: bool = False
    # Logged when asked (all but the read-only ones).
    logged: bool = True
    # A successful reply is the last on its connection (the master is going away).
    last: bool = False
    reply_is_text: bool = False  # `ctl` prints reply["text"] itself

    @property
    def synopsis(self) -> str:
        return " ".join([self.name, *(p.synopsis for p in self.params)])

    def describe(self, params: Mapping[str, Any]) -> str:
        """The request in words, for the log: `scale 7`, `stop --quick`."""
        words = [self.name]
        for p in self.params:
            value = params.get(p.key)
            if p.is_flag:
                if value is True:
                    words.append(p.word)
            elif value is not None:
                words.append(str(value))
        return " ".join(words)

    def request(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"command": self.name, **params}


def _status(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    return ok(**m.status())


def _scale(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    m.scale(params["workers"], why)
    return ok(workers_wanted=m.wanted)


def _step(delta: int) -> Handler:
    # As the signals: one more or one fewer (with MIN:MAX, the bounds move too).
    def run(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
        m.step(delta, why)
        return ok(workers_wanted=m.wanted)

    return run


def _reload(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    failure = m.reload(why=why)
    return error(failure) if failure else ok(workers_wanted=m.wanted)


def _reopen(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    failure = m.reopen_logs()
    return error(failure) if failure else ok()


def _stop(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    m.stop(quick=params["quick"], why="control stop")
    return ok(stopping=m.stopping)


def _upgrade(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    pid, refusal = m.upgrade(why=why)
    if pid is None:
        return error(refusal or "upgrade failed; see the master's log")
    return ok(new_master_pid=pid)


def _metrics(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    try:
        return ok(text=m.metrics_text())
    except StartupError as exc:  # prometheus_client is not installed
        return error(str(exc).replace("--metrics needs", "metrics need"))


def _refork(m: Commands, params: Mapping[str, Any], why: str) -> Reply:
    failure = m.refork()
    return error(failure) if failure else ok()


OK = '`{"ok": true}`'
WANTED = '`{"ok": true, "workers_wanted": N}`'

COMMANDS: tuple[Command, ...] = (
    Command(
        "status",
        "the master and its workers",
        _status,
        (
            Row(
                {},
                "the master's state",
                '`{"ok": true, "master": {...}, "workers": [...]}` (fields below)',
            ),
        ),
        while_stopping=True,
        logged=False,
    ),
    Command(
        "scale",
        "keep exactly N workers (N >= 0)",
        _scale,
        (
            Row(
                {"workers": 7},
                "set the worker count to exactly N, like TTIN/TTOU",
                '`{"ok": true, "workers_wanted": 7}`',
            ),
        ),
        params=(Param("workers", "N", "the count to keep", worker_count, None, whole_number_word),),
    ),
    Command("ttin", "one more worker (as TTIN)", _step(1), (Row({}, "as TTIN", WANTED),)),
    Command("ttou", "one fewer worker (as TTOU)", _step(-1), (Row({}, "as TTOU", WANTED),)),
    Command(
        "reload",
        "re-read the config file and reload the app (as HUP)",
        _reload,
        (Row({}, "as HUP", WANTED),),
    ),
    Command(
        "reopen",
        "reopen the log file (as USR1)",
        _reopen,
        (Row({}, "as USR1", OK),),
        while_stopping=True,  # as USR1: a stop may outlast a log rotation
    ),
    Command(
        "stop",
        "graceful stop (as QUIT), or a quick stop (as INT)",
        _stop,
        (
            Row(
                {},
                "as QUIT",
                '`{"ok": true, "stopping": "graceful"}` (`"draining"` with `--drain`)',
            ),
            Row({"quick": True}, "as INT", '`{"ok": true, "stopping": "quick"}`'),
        ),
        params=(Param("quick", "--quick", "a quick stop (as INT)", flag("quick"), default=False),),
        while_stopping=True,
        last=True,
    ),
    Command(
        "upgrade",
        "re-exec a new master (as USR2)",
        _upgrade,
        (Row({}, "as USR2", '`{"ok": true, "new_master_pid": P}`'),),
    ),
    Command(
        "metrics",
        "print the master's Prometheus metrics (the text of /metrics)",
        _metrics,
        (
            Row(
                {},
                "the text `--metrics` serves at `/metrics` (also without `--metrics`)",
                '`{"ok": true, "text": "..."}` (`ctl metrics` prints the text itself)',
            ),
        ),
        while_stopping=True,  # read-only, like status
        reply_is_text=True,
    ),
    Command(
        "refork",
        "make the busiest ready worker the mold new workers fork from",
        _refork,
        (
            Row(
                {},
                "promote the ready worker with the most tasks to mold now (as "
                "`--refork-after` does); refused while a promotion, reload or refork is "
                "under way, or when no worker is ready",
                OK,
            ),
        ),
    ),
)

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
NAMES = tuple(BY_NAME)
# `status, scale N, ..., stop [--quick], ...`: the synopsis in usage lines and errors.
SYNOPSIS = ", ".join(c.synopsis for c in COMMANDS)


# -- the master's side: a request line into (command, checked parameters) ---------------------


def _from_json(text: str) -> tuple[str, dict[str, Any]]:
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestError("bad request: not valid JSON") from None
    if not isinstance(request, dict):
        raise RequestError("bad request: expected a JSON object")
    name = request.get("command")
    if not isinstance(name, str):
        raise RequestError('bad request: "command" must be a string')
    return name, {k: v for k, v in request.items() if k != "command"}


def _from_words(text: str) -> tuple[str, dict[str, Any]]:
    name, *rest = text.split()
    command = BY_NAME.get(name)
    given: dict[str, Any] = {}
    positionals = [p for p in command.params if not p.is_flag] if command else []
    flags = {p.word: p for p in command.params if p.is_flag} if command else {}
    for word in rest:
        option = flags.get(word)
        if option is not None and option.key not in given:
            given[option.key] = True
        elif positionals:
            given[positionals.pop(0).key] = word
        else:
            raise RequestError(f"bad request: unexpected arguments for {name[:SHOWN]!r}")
    return name, given


def parse_request(text: str) -> tuple[str, dict[str, Any]]:
    """A JSON object, or `ctl` words (`text` is stripped and not empty); returns the
    command's name and its checked parameters. Raises RequestError."""
    name, given = _from_json(text) if text[0] in "{[" else _from_words(text)
    command = BY_NAME.get(name)
    if command is None:
        raise RequestError(f"unknown command {name[:SHOWN]!r}; commands: {SYNOPSIS}")
    params = {p.key: p.check(given.get(p.key, p.default)) for p in command.params}
    return name, params


def run(name: str, params: Mapping[str, Any], master: Commands, log: logging.Logger) -> Reply:
    """What the master answers. While it stops, only the read-only commands,
    `reopen` and `stop` run; the others are refused, and the refusal logged."""
    command = BY_NAME[name]
    if master.stopping and not command.while_stopping:
        log.info("control %s ignored: master is stopping", name)
        return error("master is stopping")
    return command.run(master, params, f"control {command.describe(params)}")


# -- the docs' tables ---------------------------------------------------------------------------


def reference_rows() -> list[tuple[str, str, str, str]]:
    """The rows of docs/reference.md's protocol table: JSON request, words, what it
    does, the reply on success (what tests/test_docs.py holds the docs to)."""
    rows = []
    for command in COMMANDS:
        for row in command.rows:
            request = json.dumps(command.request(row.params), separators=(", ", ": "))
            rows.append((f"`{request}`", f"`{command.describe(row.params)}`", row.does, row.reply))
    return rows


TABLE_HEADER = "| JSON request | words | what it does | reply on success |"


def markdown_table() -> str:
    """docs/reference.md's protocol table (`make docs` writes it there)."""
    lines = [TABLE_HEADER, "|---|---|---|---|"]
    lines.extend("| " + " | ".join(row) + " |" for row in reference_rows())
    return "\n".join(lines) + "\n"


def help_lines(indent: str = "  ") -> list[str]:
    """`ctl --help`'s list: one line per command."""
    width = max(len(c.synopsis) for c in COMMANDS) + 2
    return [f"{indent}{c.synopsis.ljust(width)}{c.help}" for c in COMMANDS]


__all__ = [
    "COMMANDS",
    "MAX_LINE",
    "SYNOPSIS",
    "Command",
    "Commands",
    "Param",
    "RequestError",
    "parse_request",
    "reference_rows",
    "run",
    "worker_count",
]
