"""Settings: each option declared once, on its field, for the command line and the config file.

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
from unicornish.options import Option, declared_options, option
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
    """--forwarded-allow-ips: addresses or networks (CIDR), comma-separated, or *;
    each checked and spelt one way, joined by commas (as uvicorn takes them)."""
    import ipaddress

    what = f"must be IP addresses or networks separated by commas, or *, got {value!r}"
    items = value if isinstance(value, (list, tuple)) else text(value).split(",")
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            raise ValueError(what)
        if item != "*":
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(what) from None
            # One spelling per address (::1, not 0:0:0:0:0:0:0:1): workers compare text.
            item = str(network.network_address) if "/" not in item else str(network)
        out.append(item)
    return ",".join(out)


def wsgi_spec(value: Any) -> str:
    """--wsgi MODULE[:NAME]: NAME an identifier, with () to call a factory."""
    spec = text(value).strip()
    module, sep, name = spec.partition(":")
    bare = name[:-2] if name.endswith("()") else name
    if not module or (sep and not bare.isidentifier()):
        raise ValueError(f"must be MODULE:NAME (e.g. myproject.wsgi:application), got {value!r}")
    return spec


def path_prefix(value: Any) -> str | None:
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
class Settings:
    """Every option, declared once on its field (options.option), in --help's order.

    An option's name is its field's name: `--graceful-timeout` on the command
    line, `graceful_timeout` in the config file. Adding one is one field here,
    `name: type = option(default, converter, help, metavar, value=..., doc=...)`,
    plus its behaviour; `make docs` then writes the reference's table.
    """

    app: str | None = option(
        None,
        text,
        "a .py file path or a dotted module name (pkg.tasks) with worker_start(worker)",
        "APP",
        kind="unicornish.worker.tasks",
        default_text="required, unless `--asgi` or `--wsgi` is given",
        value="path ending in `.py` (or containing `/`), or a dotted module name",
        doc="the app to run, here or in the config file; see [The app](#the-app)",
    )
    asgi: str | None = option(
        None,
        text,
        "serve an ASGI app (FastAPI, Starlette...) on the --listen sockets: MODULE:NAME "
        "(NAME defaults to app; NAME() calls a factory); needs unicornish[asgi]",
        "MODULE:NAME",
        kind="unicornish.worker.asgi",
        default_text="required, unless `--app` or `--wsgi` is given",
        value="`MODULE` (a `.py` path or a dotted module) with an optional `:NAME` "
        "(default `app`) or `:NAME()` (a factory called with no arguments)",
        doc="serve an ASGI app on the `--listen` sockets with uvicorn in each worker; needs "
        "`pip install 'unicornish[asgi]'` and at least one `--listen`; see "
        "[docs/asgi.md](asgi.md)",
    )
    wsgi: str | None = option(
        None,
        wsgi_spec,
        "serve a WSGI app (Flask, Django...) over HTTP/1.1 on the --listen sockets: "
        "MODULE:NAME (NAME defaults to application; NAME() calls a factory); needs "
        "unicornish[wsgi]",
        "MODULE:NAME",
        kind="unicornish.worker.wsgi",
        default_text="required, unless `--app` or `--asgi` is given",
        value="`MODULE` (a dotted module, imported with the current directory first on "
        "`sys.path`, or a `.py` path) with an optional `:NAME` (default `application`) or "
        "`:NAME()` (a factory called with no arguments)",
        doc="serve a WSGI app on the `--listen` sockets: each worker is one thread with an "
        "epoll loop and llhttp's parser; needs `pip install 'unicornish[wsgi]'` and at least "
        "one `--listen`; see [docs/wsgi.md](wsgi.md)",
    )
    workers: int = option(
        1,
        worker_count,
        f"workers to keep alive, 0 to {MAX_WORKERS}; auto: from the cgroup's CPU quota, "
        "cpuset and, with --worker-memory, memory limit; MIN:MAX: adaptive, keeping "
        "--idle-workers idle",
        "N|auto|MIN:MAX",
        value=f"whole number 0 to {MAX_WORKERS}, `auto`, or `MIN:MAX` "
        f"(0 <= MIN <= MAX <= {MAX_WORKERS})",
        doc="workers to keep alive; `auto`: the CPUs the cgroup's quota and the cpuset "
        "allow (rounded up), capped by `--worker-memory`; logged as `workers auto = N "
        "(reason)`, resolved again on HUP; `MIN:MAX`: an adaptive count (below)",
    )
    idle_workers: int = option(
        1,
        idle_count,
        "with --workers MIN:MAX: idle workers to keep ready for new work",
        "K",
        value=f"whole number 1 to {MAX_WORKERS}",
        doc="with `--workers MIN:MAX`: idle workers to keep; ignored, with a warning, without it",
    )
    scale_down_after: float = option(
        30.0,
        positive_seconds,
        "with --workers MIN:MAX: retire one worker after more than --idle-workers have "
        "been idle this long",
        "SECONDS",
        value="number > 0",
        doc="with `--workers MIN:MAX`: how long more than K workers must be idle, without "
        "a break, before one is retired; ignored, with a warning, without it",
    )
    worker_memory: float | None = option(
        None,
        optional_mebibytes,
        "with --workers auto: MiB one worker needs; caps workers at memory limit / MB",
        "MB",
        value="number > 0",
        doc="with `--workers auto`: MiB one worker needs; the count is at most the memory "
        "limit / MB (at least 1)",
    )
    spares: int = option(
        0,
        worker_total,
        "pre-forked standby processes that take a dead worker's slot at once",
        "N",
        value=f"whole number 0 to {MAX_WORKERS}",
        doc="booted standby processes that take a dead worker's slot without a fork",
    )
    poll: float = option(
        30.0,
        poll_seconds,
        "longest the master sleeps before re-checking its workers, at most a day",
        "SECONDS",
        value=f"number > 0, at most {MAX_POLL:g}",
        doc="longest the master sleeps without a reason to wake; worker exits, signals "
        "and deadlines wake it at once",
    )
    preload: bool = option(
        False,
        flag,
        "load the app once in the master, before forking",
        is_flag=True,
        doc="load the app once in the master, before forking (`gc.freeze()` before each fork)",
    )
    timeout: float | None = option(
        None,
        optional_positive_seconds,
        "SIGKILL a worker whose current task has run longer than this",
        "SECONDS",
        value="number > 0",
        doc="a worker whose current task has run this long gets its Python traceback "
        "dumped to the log, then SIGKILL (its whole process group). `--wsgi`: a request, "
        "from the app's call to the end of its response. `--asgi`: a worker whose event "
        "loop has been blocked this long (its 0.1 s tick is the heartbeat)",
    )
    graceful_timeout: float = option(
        30.0,
        seconds,
        "how long QUIT/WINCH/HUP/TTOU wait for a worker before SIGKILL",
        "SECONDS",
        value="number ≥ 0",
        doc="how long a worker asked to stop gracefully (QUIT, WINCH, TTOU, HUP "
        "replacement, `--max-memory`) has before SIGKILL of its process group; INT/TERM "
        "wait min(this, 5 s)",
    )
    drain: float = option(
        0.0,
        seconds,
        "on a graceful stop (QUIT, TERM with --term graceful): report not ready and keep "
        "serving this long first, then stop gracefully",
        "SECONDS",
        value="number ≥ 0",
        doc="on a graceful stop (QUIT, `ctl stop`, TERM with `--term graceful`): report "
        "not ready and keep the workers serving this long, then stop gracefully; see below",
    )
    pid: str | None = option(
        None,
        optional_text,
        "pid file of the master",
        "FILE",
        default_text="none",
        value="path",
        doc="the master's pid file; see [Pid file](#pid-file)",
    )
    log_file: str | None = option(
        None,
        optional_text,
        "append logs here instead of stderr; reopened on USR1",
        "FILE",
        default_text="stderr",
        value="path",
        doc="append the log (and everything written to stderr) here; reopened on USR1",
    )
    log_format: str = option(
        "text",
        log_format,
        "log lines as text or json: one JSON object per line",
        "text|json",
        value="`text` or `json`",
        doc="`json`: each log line is one JSON object, for log shippers; `text` lines "
        "stay as they are",
    )
    listen: tuple[str, ...] = option(
        (),
        text_list,
        "HOST:PORT, [V6]:PORT or unix:/path; repeatable; bound by the master",
        "ADDR",
        repeatable=True,
        applied_by="USR2",
        usr2_note="listen addresses changed: they take effect on USR2 (re-exec)",
        default_text="none",
        value="`HOST:PORT`, `[V6]:PORT`, `PORT`, `*:PORT`, `unix:/path`, "
        "`unix:/path:MODE`; repeatable",
        doc="a listening socket, bound by the master and inherited by every worker",
    )
    # -- HTTP (--wsgi and --asgi) --
    keepalive: float = option(
        5.0,
        seconds,
        "seconds an idle keep-alive connection is kept open; 0 closes it after each response",
        "SECONDS",
        value="number ≥ 0",
        doc="HTTP (`--wsgi`, `--asgi`): how long an idle keep-alive connection is kept open; "
        "0 closes the connection after each response (`connection: close`)",
    )
    header_timeout: float = option(
        10.0,
        positive_seconds,
        "--wsgi: a request head must arrive within this, and a body must move at least this "
        "often, else 408 and close",
        "SECONDS",
        value="number > 0",
        doc="`--wsgi`: a request head must be complete this long after its first byte, and a "
        "body must move at least this often; else `408` and the connection is closed (one "
        "that sent nothing is closed without an answer)",
    )
    limit_request_body: int = option(
        104857600,
        count,
        "--wsgi: largest request body in bytes, else 413; 0: no limit",
        "BYTES",
        value="whole number ≥ 0 (0 = no limit)",
        doc="`--wsgi`: the largest request body (Content-Length or chunked); larger gets `413`. "
        "Bodies over 1 MiB are spooled to a temporary file",
    )
    worker_connections: int = option(
        4096,
        positive_count,
        "--wsgi: most open client connections per worker; past it, new ones wait",
        "N",
        value="whole number > 0",
        doc="`--wsgi`: the most open client connections per worker; past it the worker stops "
        "accepting until one closes (new connections wait in the listen queue or go to "
        "another worker)",
    )
    forwarded_allow_ips: str = option(
        "127.0.0.1,::1",
        address_list,
        "peers whose X-Forwarded-For / X-Forwarded-Proto are trusted: IPs or networks "
        "separated by commas, or * (unix-socket peers always are)",
        "LIST",
        value="IPs or networks separated by commas, or `*`",
        doc="HTTP (`--wsgi`, `--asgi`): peers whose `X-Forwarded-For` / `X-Forwarded-Proto` "
        "are trusted (the request's client and scheme then come from them); unix-socket "
        "peers always are",
    )
    access_log: str = option(
        "off",
        access_log_format,
        "one log line per request: off, text or json",
        "off|text|json",
        value="`off`, `text` or `json`",
        doc='HTTP (`--wsgi`, `--asgi`): one log line per request, `worker[n] CLIENT "METHOD PATH '
        'HTTP/V" STATUS DURATIONms` (`json`: event `http_request` with `client`, `method`, '
        "`path`, `http_version`, `status`, `duration` in seconds; the JSON object itself "
        "needs `--log-format json`)",
    )
    limit_request_line: int = option(
        8190,
        positive_count,
        "longest request line in bytes; longer gets 414",
        "BYTES",
        value="whole number > 0",
        doc="HTTP (`--wsgi`, `--asgi`): the longest request line (`METHOD TARGET HTTP/1.1`); "
        "longer gets 414 (`--asgi`: checked after uvicorn parsed the request)",
    )
    limit_request_fields: int = option(
        100,
        positive_count,
        "most header fields in a request; more gets 431",
        "N",
        value="whole number > 0",
        doc="HTTP (`--wsgi`, `--asgi`): the most header fields in a request; more gets 431 "
        "(an `--asgi` WebSocket handshake: refused, 403)",
    )
    limit_request_field_size: int = option(
        8190,
        positive_count,
        "longest header field line in bytes; longer gets 431",
        "BYTES",
        value="whole number > 0",
        doc="HTTP (`--wsgi`, `--asgi`): the longest header field line (`name: value`); longer "
        "gets 431 (an `--asgi` WebSocket handshake: refused, 403)",
    )
    # -- ASGI (--asgi only), under uvicorn's names --
    root_path: str | None = option(
        None,
        path_prefix,
        "--asgi: the path prefix the app is mounted under behind a proxy (ASGI root_path)",
        "PATH",
        default_text="none",
        value="a path starting with `/`",
        doc="`--asgi` only: the prefix the app is mounted under behind a proxy (ASGI "
        "`root_path`; uvicorn's `--root-path`)",
    )
    lifespan: str = option(
        "auto",
        lifespan_mode,
        "--asgi: run the app's lifespan startup/shutdown: auto (if it supports it), on (a "
        "failure fails the boot) or off",
        "auto|on|off",
        value="`auto`, `on` or `off`",
        doc="`--asgi` only: the app's lifespan startup and shutdown (uvicorn's `--lifespan`). "
        "`auto`: run it if the app supports it (an app that raises on the lifespan scope is "
        "taken as not supporting it); `on`: that too is a failed boot; `off`: never",
    )
    limit_concurrency: int | None = option(
        None,
        optional_count,
        "--asgi: most connections and requests at once per worker; past it, 503",
        "N",
        value="whole number ≥ 0 (0 = off)",
        doc="`--asgi` only: most connections and requests at once in one worker; past it, "
        "503 (uvicorn's `--limit-concurrency`)",
    )
    ws_max_size: int = option(
        16 * 1024 * 1024,
        positive_count,
        "--asgi: largest WebSocket message in bytes",
        "BYTES",
        value="whole number > 0",
        doc="`--asgi` only: the largest WebSocket message accepted (uvicorn's `--ws-max-size`)",
    )
    ws_ping_interval: float | None = option(
        20.0,
        optional_seconds,
        "--asgi: seconds between WebSocket pings; 0 sends none",
        "SECONDS",
        value="number ≥ 0 (0 = off)",
        doc="`--asgi` only: seconds between WebSocket pings (uvicorn's `--ws-ping-interval`)",
    )
    ws_ping_timeout: float | None = option(
        20.0,
        optional_seconds,
        "--asgi: seconds to wait for a pong before closing; 0 waits forever",
        "SECONDS",
        value="number ≥ 0 (0 = off)",
        doc="`--asgi` only: how long to wait for a pong before closing the WebSocket "
        "(uvicorn's `--ws-ping-timeout`)",
    )
    control: str | None = option(
        None,
        optional_text,
        "the master's unix control socket, mode 0600, for unicornish status/ctl",
        "PATH",
        applied_by="USR2",
        usr2_note="control socket changed: it takes effect on USR2 (re-exec)",
        default_text="none",
        value="path",
        doc="the master's control socket; see [Control socket](#control-socket)",
    )
    metrics: str | None = option(
        None,
        optional_text,
        "serve Prometheus metrics, /healthz and /readyz over HTTP at HOST:PORT, PORT or unix:/path",
        "ADDR",
        applied_by="USR2",
        usr2_note="metrics address changed: it takes effect on USR2 (re-exec)",
        default_text="none",
        value="`HOST:PORT`, `[V6]:PORT`, `PORT`, `*:PORT`, `unix:/path`, `unix:/path:MODE`",
        doc="serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` over HTTP "
        "from the master's loop; see [Metrics](metrics.md)",
    )
    max_tasks: int | None = option(
        None,
        optional_count,
        "recycle a worker gracefully after about N tasks, +0..10% jitter",
        "N",
        value="whole number ≥ 0 (0 = off)",
        doc="a worker exits gracefully after N tasks (`--wsgi`, `--asgi`: HTTP requests) plus "
        "0–10% random jitter, and is replaced",
    )
    refork_after: tuple[int, ...] = option(
        (),
        task_counts,
        "when a worker has done N tasks it becomes the mold that new workers fork from "
        "(warm, sharing its memory); N2 for the next generation, and so on",
        "N[,N2,...]",
        value="task counts > 0, comma-separated (0 = off)",
        doc="when a worker of the current generation has done N tasks it becomes the "
        "mold, and every worker is replaced, one at a time, by a fork of it; the next "
        "generation uses N2, and so on; no reforking after the list. See "
        "[Reforking](reforking.md)",
    )
    max_memory: float | None = option(
        None,
        optional_mebibytes,
        "recycle a worker gracefully whose USS exceeds this many MiB",
        "MB",
        value="number > 0, in MiB",
        doc="every 3 s, a worker whose USS is over this gets QUIT and is replaced",
    )
    user: str | None = option(
        None,
        user_spec,
        "workers drop to this user (and group) after fork; the master keeps its own",
        "USER[:GROUP]",
        default_text="none",
        value="names or numeric ids",
        doc="workers switch to this identity after fork; the master keeps its own",
    )
    subreaper: bool = option(
        False,
        flag,
        "make the master a child subreaper, so orphaned descendants are reaped too",
        is_flag=True,
        doc="make the master a child subreaper: orphans of workers' children are reaped by it",
    )
    term: str = option(
        "quick",
        term_meaning,
        "what TERM means: quick or graceful stop",
        "graceful|quick",
        value="`graceful` or `quick`",
        doc="what TERM means to the master",
    )
    give_up_after: float | None = option(
        None,
        optional_positive_seconds,
        "exit 1 when no worker has stayed up for this long while workers are wanted",
        "SECONDS",
        value="number > 0",
        doc="exit 1 when workers are wanted but none has stayed up for this long",
    )
    daemonize: bool = option(
        False,
        flag,
        "run in the background; return once the master is ready (output to --log-file)",
        is_flag=True,
        short="-D",
        applied_by="start",
        doc="run in the background; the command returns once the master is ready",
    )
    # The command line only: it names the file the other options may come from.
    config: str | None = option(
        None,
        str,
        "a Python config file",
        "FILE",
        short="-c",
        applied_by="start",
        in_file=False,
        default_text="none",
        value="path",
        doc="a Python config file, read again on HUP; see [Config file](#config-file)",
    )

    # Not options: what build_settings works out from them.
    # With --workers auto: where the figure came from (re-resolved on HUP).
    workers_auto: str | None = None
    # With --workers MIN:MAX: the bounds of the adaptive count (None: a fixed count).
    workers_min: int | None = None
    workers_max: int | None = None
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict, compare=False)

    @property
    def app_option(self) -> Option:
        """The option that named the app (--app, ...): it chooses the worker kind."""
        for each in APP_OPTIONS:
            if getattr(self, each.name):
                return each
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
            k: (tuple(v) if _is_repeatable(k) else v) for k, v in values.items() if k in known
        }
        return replace(self, **clean)


# Every declared option, in --help's order (-c/--config among them).
OPTIONS: tuple[Option, ...] = declared_options(Settings)
OPTIONS_BY_NAME = {each.name: each for each in OPTIONS}
# The options that name the app, each choosing a worker kind.
APP_OPTIONS = tuple(each for each in OPTIONS if each.kind)
# The options a config file may set: all but -c itself.
FILE_OPTIONS = {each.name: each for each in OPTIONS if each.in_file}


def _is_repeatable(name: str) -> bool:
    each = OPTIONS_BY_NAME.get(name)
    return each is not None and each.repeatable


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
        elif name in FILE_OPTIONS:
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
                flag_name = OPTIONS_BY_NAME[name].flag_name
                warnings.append(f"{flag_name} is used only with --workers MIN:MAX; ignored")
    settings = Settings().with_values(merged)
    settings = replace(settings, hooks=hooks)
    given = [each for each in APP_OPTIONS if getattr(settings, each.name)]
    flags = one_of(each.flag_name for each in APP_OPTIONS)
    if not given:
        if config_path:
            names = one_of(each.name for each in APP_OPTIONS)
            raise StartupError(f"no app: give {flags}, or set {names} in {config_path}")
        raise StartupError(f"no app: give {flags}")
    if len(given) > 1:
        both = " and ".join(each.flag_name for each in given)
        raise StartupError(f"give one app, not {both}")
    return settings, warnings


def one_of(words: Iterable[str]) -> str:
    """`a, b or c`: the choices a message offers."""
    *first, last = list(words)
    return f"{', '.join(first)} or {last}" if first else last


def settings_fields(settings: Settings, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in names}
