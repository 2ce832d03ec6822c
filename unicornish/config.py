"""Settings: one table of options serves the command line and the config file.

Precedence is defaults < config file < command line, and HUP re-reads the
file while keeping the command line's values on top.
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from unicornish.errors import StartupError
from unicornish.host import cgroups
from unicornish.protocol import HOOK_NAMES, MAX_WORKERS

# The directory the master was started in: relative --pid/--log-file paths mean it.
try:
    START_DIR = os.getcwd()
except OSError:  # started in a directory since removed: paths stay as given
    START_DIR = ""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"must be {what}, got {value!r}")
    return number


def count(value: Any) -> int:
    """A whole number >= 0 (a worker count, a task count)."""
    what = "a whole number >= 0"
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip(), 10)
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
    if number < 0:
        raise ValueError(f"must be {what}, got {value!r}")
    return number


def worker_total(value: Any) -> int:
    """A worker (or spare) count: 0 to MAX_WORKERS."""
    number = count(value)
    if number > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS}, got {value!r}")
    return number


# The longest sleep --poll may ask for: a day (the master wakes for events anyway).
MAX_POLL = 86_400.0


def poll_seconds(value: Any) -> float:
    number = positive_seconds(value)
    if number > MAX_POLL:
        raise ValueError(f"must be at most {MAX_POLL:g} seconds, got {value!r}")
    return number


WORKERS_WHAT = "a whole number >= 0, 'auto' or MIN:MAX"


def worker_count(value: Any) -> int | str | tuple[int, int]:
    """--workers: a whole number 0 to MAX_WORKERS, "auto" (resolved from cgroups
    in build_settings), or "MIN:MAX" (an adaptive count, see autoscale.py)."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    if isinstance(value, str) and ":" in value:
        return worker_range(value)
    try:
        return worker_total(value)
    except ValueError as exc:
        if "at most" in str(exc):
            raise
        raise ValueError(f"must be {WORKERS_WHAT}, got {value!r}") from None


def worker_range(value: str) -> tuple[int, int]:
    """MIN:MAX with 0 <= MIN <= MAX <= MAX_WORKERS."""
    low_text, _sep, high_text = value.strip().partition(":")
    try:
        low, high = count(low_text), count(high_text)
    except ValueError:
        raise ValueError(f"must be {WORKERS_WHAT}, got {value!r}") from None
    if high > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS}, got {value!r}")
    if low > high:
        raise ValueError(f"MIN:MAX needs MIN <= MAX, got {value!r}")
    return low, high


def idle_count(value: Any) -> int:
    """--idle-workers: 1 to MAX_WORKERS (0 would never add a worker: MIN would do)."""
    number = positive_count(value)
    if number > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS}, got {value!r}")
    return number


def positive_count(value: Any) -> int:
    number = count(value)
    if number == 0:
        raise ValueError("must be a whole number > 0, got 0")
    return number


def positive_seconds(value: Any) -> float:
    number = _number(value, "a number of seconds > 0")
    if number <= 0:
        raise ValueError(f"must be a number of seconds > 0, got {value!r}")
    return number


def seconds(value: Any) -> float:
    number = _number(value, "a number of seconds >= 0")
    if number < 0:
        raise ValueError(f"must be a number of seconds >= 0, got {value!r}")
    return number


def optional_positive_seconds(value: Any) -> float | None:
    if value is None or value is False:
        return None
    return positive_seconds(value)


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def optional_text(value: Any) -> str | None:
    return None if value is None else text(value)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, got {value!r}")
    return value


def text_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return [text(item) for item in value]


def term_meaning(value: Any) -> str:
    if value not in ("graceful", "quick"):
        raise ValueError(f"must be 'graceful' or 'quick', got {value!r}")
    return str(value)


def log_format(value: Any) -> str:
    if value not in ("text", "json"):
        raise ValueError(f"must be 'text' or 'json', got {value!r}")
    return str(value)


def optional_count(value: Any) -> int | None:
    """A whole number >= 0, where 0 (or None) means off."""
    if value is None or value is False:
        return None
    return count(value) or None


def task_counts(value: Any) -> tuple[int, ...]:
    """--refork-after N[,N2,...]: task counts > 0, a comma-separated string or a
    list (config file); 0, "" or None: off."""
    if value is None or value is False:
        return ()
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = [part for part in str(value).split(",")]
    what = "task counts > 0, separated by commas (e.g. 50,500)"
    numbers = []
    for item in items:
        try:
            number = count(item)
        except ValueError:
            raise ValueError(f"must be {what}, got {value!r}") from None
        numbers.append(number)
    if numbers == [0]:
        return ()
    if not numbers or 0 in numbers:
        raise ValueError(f"must be {what}, got {value!r}")
    return tuple(numbers)


def optional_mebibytes(value: Any) -> float | None:
    if value is None or value is False:
        return None
    number = _number(value, "a number of MiB > 0")
    if number <= 0:
        raise ValueError(f"must be a number of MiB > 0, got {value!r}")
    return number


def user_spec(value: Any) -> str | None:
    """USER or USER:GROUP (names or numeric ids); checked against the system at start."""
    if value is None:
        return None
    spec = text(value).strip()
    user, sep, group = spec.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise ValueError(f"must be USER or USER:GROUP, got {value!r}")
    return spec


def access_log_format(value: Any) -> str:
    if value not in ("off", "text", "json"):
        raise ValueError(f"must be 'off', 'text' or 'json', got {value!r}")
    return str(value)


def address_list(value: Any) -> str:
    """--forwarded-allow-ips: comma-separated IPs or networks, or '*'."""
    items = [part.strip() for part in text(value).split(",")]
    if not all(items):
        raise ValueError(f"must be IP addresses separated by commas, or '*', got {value!r}")
    return ",".join(items)


def root_path(value: Any) -> str | None:
    """--root-path: a path starting with '/' (its trailing '/' dropped); '' or None: none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be a path starting with '/', got {value!r}")
    return value.rstrip("/") or None


def optional_seconds(value: Any) -> float | None:
    """Seconds >= 0, where 0 (or None) means off."""
    if value is None or value is False:
        return None
    return seconds(value) or None


def lifespan_mode(value: Any) -> str:
    if value not in ("auto", "on", "off"):
        raise ValueError(f"must be 'auto', 'on' or 'off', got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Option:
    """One setting: its long option, its parser, and how argparse shows it."""

    name: str
    convert: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    is_flag: bool = False
    repeatable: bool = False
    short: str | None = None
    # For the options that name the app: the module of the worker kind that runs
    # it (worker/kinds.py). Exactly one of them is given.
    kind: str | None = None

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "app",
        text,
        "a .py file path or a dotted module name (pkg.tasks) with worker_start(worker)",
        "APP",
        kind="unicornish.worker.tasks",
    ),
    Option(
        "asgi",
        text,
        "serve an ASGI app (FastAPI, Starlette...) on the --listen sockets: MODULE:NAME "
        "(NAME defaults to app; NAME() calls a factory); needs unicornish[asgi]",
        "MODULE:NAME",
        kind="unicornish.worker.asgi",
    ),
    Option(
        "workers",
        worker_count,
        f"workers to keep alive, 0 to {MAX_WORKERS} (default 1); auto: from the cgroup's "
        "CPU quota, cpuset and, with --worker-memory, memory limit; MIN:MAX: adaptive, "
        "keeping --idle-workers idle",
        "N|auto|MIN:MAX",
    ),
    Option(
        "idle_workers",
        idle_count,
        "with --workers MIN:MAX: idle workers to keep ready for new work (default 1)",
        "K",
    ),
    Option(
        "scale_down_after",
        positive_seconds,
        "with --workers MIN:MAX: retire one worker after more than --idle-workers have "
        "been idle this long (default 30)",
        "SECONDS",
    ),
    Option(
        "worker_memory",
        optional_mebibytes,
        "with --workers auto: MiB one worker needs; caps workers at memory limit / MB",
        "MB",
    ),
    Option(
        "spares",
        worker_total,
        "pre-forked standby processes that take a dead worker's slot at once (default 0)",
        "N",
    ),
    Option(
        "poll",
        poll_seconds,
        "longest the master sleeps before re-checking its workers (default 30, at most a day)",
        "SECONDS",
    ),
    Option("preload", flag, "load the app once in the master, before forking", is_flag=True),
    Option(
        "timeout",
        optional_positive_seconds,
        "SIGKILL a worker whose current task has run longer than this (default off)",
        "SECONDS",
    ),
    Option(
        "graceful_timeout",
        seconds,
        "how long QUIT/WINCH/HUP/TTOU wait for a worker before SIGKILL (default 30)",
        "SECONDS",
    ),
    Option(
        "drain",
        seconds,
        "on a graceful stop (QUIT, TERM with --term graceful): report not ready and keep "
        "serving this long first, then stop gracefully (default 0)",
        "SECONDS",
    ),
    Option("pid", optional_text, "pid file of the master", "FILE"),
    Option(
        "log_file", optional_text, "append logs here instead of stderr; reopened on USR1", "FILE"
    ),
    Option(
        "log_format",
        log_format,
        "log lines as text (default) or json: one JSON object per line",
        "text|json",
    ),
    Option(
        "listen",
        text_list,
        "HOST:PORT, [V6]:PORT or unix:/path; repeatable; bound by the master",
        "ADDR",
        repeatable=True,
    ),
    # -- HTTP (--wsgi and --asgi) --
    Option(
        "keepalive",
        seconds,
        "seconds an idle keep-alive connection is kept open; 0 closes it after each "
        "response (default 5)",
        "SECONDS",
    ),
    Option(
        "forwarded_allow_ips",
        address_list,
        "peers whose X-Forwarded-For / X-Forwarded-Proto are trusted: IPs or networks "
        "separated by commas, or * (default 127.0.0.1,::1; unix-socket peers always)",
        "LIST",
    ),
    Option(
        "access_log",
        access_log_format,
        "one log line per request: off (default), text or json",
        "off|text|json",
    ),
    Option(
        "limit_request_line",
        positive_count,
        "longest request line in bytes; longer gets 414 (default 8190)",
        "BYTES",
    ),
    Option(
        "limit_request_fields",
        positive_count,
        "most header fields in a request; more gets 431 (default 100)",
        "N",
    ),
    Option(
        "limit_request_field_size",
        positive_count,
        "longest header field line in bytes; longer gets 431 (default 8190)",
        "BYTES",
    ),
    # -- ASGI (--asgi only), under uvicorn's names --
    Option(
        "root_path",
        root_path,
        "--asgi: the path prefix the app is mounted under behind a proxy (ASGI root_path; "
        "default none)",
        "PATH",
    ),
    Option(
        "lifespan",
        lifespan_mode,
        "--asgi: run the app's lifespan startup/shutdown: auto (default: if it supports "
        "it), on (a failure fails the boot) or off",
        "auto|on|off",
    ),
    Option(
        "limit_concurrency",
        optional_count,
        "--asgi: most connections and requests at once per worker; past it, 503 (default off)",
        "N",
    ),
    Option(
        "ws_max_size",
        positive_count,
        "--asgi: largest WebSocket message in bytes (default 16777216)",
        "BYTES",
    ),
    Option(
        "ws_ping_interval",
        optional_seconds,
        "--asgi: seconds between WebSocket pings; 0 sends none (default 20)",
        "SECONDS",
    ),
    Option(
        "ws_ping_timeout",
        optional_seconds,
        "--asgi: seconds to wait for a pong before closing; 0 waits forever (default 20)",
        "SECONDS",
    ),
    Option(
        "control",
        optional_text,
        "the master's unix control socket, mode 0600 (for unicornish status/ctl; default none)",
        "PATH",
    ),
    Option(
        "metrics",
        optional_text,
        "serve Prometheus metrics, /healthz and /readyz over HTTP at HOST:PORT, PORT or "
        "unix:/path (needs unicornish[metrics]; default none)",
        "ADDR",
    ),
    Option(
        "max_tasks",
        optional_count,
        "recycle a worker gracefully after about N tasks (+0..10%% jitter; default off)",
        "N",
    ),
    Option(
        "refork_after",
        task_counts,
        "when a worker has done N tasks it becomes the mold that new workers fork from "
        "(warm, sharing its memory); N2 for the next generation, and so on (default off)",
        "N[,N2,...]",
    ),
    Option(
        "max_memory",
        optional_mebibytes,
        "recycle a worker gracefully whose USS exceeds this many MiB (default off)",
        "MB",
    ),
    Option(
        "user",
        user_spec,
        "workers drop to this user (and group) after fork; the master keeps its own",
        "USER[:GROUP]",
    ),
    Option(
        "subreaper",
        flag,
        "make the master a child subreaper, so orphaned descendants are reaped too",
        is_flag=True,
    ),
    Option(
        "term",
        term_meaning,
        "what TERM means: quick or graceful stop (default quick)",
        "graceful|quick",
    ),
    Option(
        "give_up_after",
        optional_positive_seconds,
        "exit 1 when no worker has stayed up for this long while workers are wanted",
        "SECONDS",
    ),
    Option(
        "daemonize",
        flag,
        "run in the background; return once the master is ready (output to --log-file)",
        is_flag=True,
        short="-D",
    ),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
# The options that name the app, each choosing a worker kind.
APP_OPTIONS = tuple(option for option in OPTIONS if option.kind)


@dataclass(frozen=True)
class Settings:
    app: str | None = None
    asgi: str | None = None
    workers: int = 1
    # With --workers auto: where the figure came from (re-resolved on HUP).
    workers_auto: str | None = None
    # With --workers MIN:MAX: the bounds of the adaptive count (None: a fixed count).
    workers_min: int | None = None
    workers_max: int | None = None
    idle_workers: int = 1
    scale_down_after: float = 30.0
    worker_memory: float | None = None
    spares: int = 0
    poll: float = 30.0
    preload: bool = False
    timeout: float | None = None
    graceful_timeout: float = 30.0
    drain: float = 0.0
    pid: str | None = None
    log_file: str | None = None
    log_format: str = "text"
    listen: tuple[str, ...] = ()
    # -- HTTP (--wsgi and --asgi) --
    keepalive: float = 5.0
    forwarded_allow_ips: str = "127.0.0.1,::1"
    access_log: str = "off"
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    # -- ASGI (--asgi only) --
    root_path: str | None = None
    lifespan: str = "auto"
    limit_concurrency: int | None = None
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    control: str | None = None
    metrics: str | None = None
    max_tasks: int | None = None
    max_memory: float | None = None
    refork_after: tuple[int, ...] = ()
    user: str | None = None
    subreaper: bool = False
    term: str = "quick"
    give_up_after: float | None = None
    daemonize: bool = False
    config: str | None = None
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict, compare=False)

    @property
    def app_option(self) -> Option:
        """The option that named the app (--app, ...): it chooses the worker kind."""
        for option in APP_OPTIONS:
            if getattr(self, option.name):
                return option
        return APP_OPTIONS[0]

    @property
    def app_spec(self) -> str:
        """The app as given to its option."""
        return str(getattr(self, self.app_option.name) or "")

    @property
    def kind(self) -> str:
        """The module of the worker kind that runs the app (worker/kinds.py)."""
        return self.app_option.kind or ""

    def with_values(self, values: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(self)}
        clean: dict[str, Any] = {
            k: (tuple(v) if k == "listen" else v) for k, v in values.items() if k in known
        }
        return replace(self, **clean)


def convert_option(name: str, value: Any) -> Any:
    return OPTIONS_BY_NAME[name].convert(value)


def _is_plain_setting(name: str, value: Any) -> bool:
    """Names a config file may define without them being settings: helpers."""
    if name.startswith("_"):
        return False
    return not isinstance(value, (types.ModuleType, type)) and not callable(value)


def read_config_file(path: str) -> tuple[dict[str, Any], dict[str, Callable[..., Any]], list[str]]:
    """Run a config file; return its settings, its hooks and warnings.

    Raises StartupError with one line of explanation for anything wrong.
    """
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except FileNotFoundError:
        raise StartupError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise StartupError(f"config file is a directory: {path}") from None
    except OSError as exc:
        raise StartupError(f"cannot read config file {path}: {exc.strerror}") from None
    namespace: dict[str, Any] = {"__file__": os.path.abspath(path), "__name__": "__config__"}
    try:
        code = compile(source, path, "exec")
        exec(code, namespace)
    except SyntaxError as exc:
        raise StartupError(
            f"config file {path}: SyntaxError: {exc.msg}"
            + (f" (line {exc.lineno})" if exc.lineno else "")
        ) from None
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported in one line
        raise StartupError(f"config file {path}: {type(exc).__name__}: {exc}") from None
    values: dict[str, Any] = {}
    hooks: dict[str, Callable[..., Any]] = {}
    warnings: list[str] = []
    for name, value in namespace.items():
        if name in HOOK_NAMES:
            if not callable(value):
                raise StartupError(f"config file {path}: {name} must be a function")
            hooks[name] = value
        elif name in OPTIONS_BY_NAME:
            try:
                values[name] = convert_option(name, value)
            except ValueError as exc:
                raise StartupError(f"config file {path}: {name} {exc}") from None
        elif name == "config":
            raise StartupError(f"config file {path}: 'config' cannot be set in a config file")
        elif _is_plain_setting(name, value) and name not in ("__file__", "__name__"):
            warnings.append(f"config file {path}: unknown setting {name!r} ignored")
    return values, hooks, warnings


def resolve_auto_workers(worker_memory: float | None) -> tuple[int, str]:
    """Read at each build (start, HUP, USR2): a container's limits can change while we run."""
    return cgroups.auto_workers(worker_memory)


def build_settings(cli_values: dict[str, Any]) -> tuple[Settings, list[str]]:
    """Merge defaults, the config file named on the command line, and the command line."""
    config_path = cli_values.get("config")
    file_values: dict[str, Any] = {}
    hooks: dict[str, Callable[..., Any]] = {}
    warnings: list[str] = []
    if config_path:
        file_values, hooks, warnings = read_config_file(config_path)
    merged = {**file_values, **cli_values}
    for name in ("pid", "log_file"):
        if merged.get(name):
            # Relative to where we were started, for good: a worker's after_fork or a
            # preloaded app may chdir, and USR1 or exit must still find the file.
            merged[name] = os.path.normpath(os.path.join(START_DIR, merged[name]))
    if merged.get("workers") == "auto":
        merged["workers"], merged["workers_auto"] = resolve_auto_workers(
            merged.get("worker_memory")
        )
        warnings.append(f"workers auto = {merged['workers']} ({merged['workers_auto']})")
    elif merged.get("worker_memory") is not None:
        warnings.append("--worker-memory is used only with --workers auto; ignored")
    if isinstance(merged.get("workers"), tuple):
        low, high = merged["workers"]
        merged["workers_min"], merged["workers_max"] = low, high
        # Start with as many as keep --idle-workers idle once nothing is busy:
        # no ramp from MIN at the first requests.
        idle = merged.get("idle_workers", Settings.idle_workers)
        merged["workers"] = min(high, max(low, idle))
    else:
        for name in ("idle_workers", "scale_down_after"):
            if name in merged:
                flag_name = "--" + name.replace("_", "-")
                warnings.append(f"{flag_name} is used only with --workers MIN:MAX; ignored")
    settings = Settings().with_values(merged)
    settings = replace(settings, hooks=hooks)
    given = [option for option in APP_OPTIONS if getattr(settings, option.name)]
    flags = " or ".join(option.flag_name for option in APP_OPTIONS)
    if not given:
        if config_path:
            names = " or ".join(option.name for option in APP_OPTIONS)
            raise StartupError(f"no app: give {flags} or set {names} in {config_path}")
        raise StartupError(f"no app: give {flags}")
    if len(given) > 1:
        both = " and ".join(option.flag_name for option in given)
        raise StartupError(f"give one app, not {both}")
    return settings, warnings


def settings_fields(settings: Settings, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}
