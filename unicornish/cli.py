"""The command line: parse, check everything before forking, then become the master.

Bad input ends here with one line on stderr and exit 2 (the command line is
wrong) or 1 (what it names is wrong), before any worker exists.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from unicornish import __version__
from unicornish import app as app_module
from unicornish.config import (
    APP_OPTIONS,
    OPTIONS,
    Option,
    Settings,
    build_settings,
    one_of,
)
from unicornish.errors import StartupError, UsageError
from unicornish.host import log, pidfile, privileges
from unicornish.host import sockets as sockets_module
from unicornish.host.privileges import Identity
from unicornish.protocol import METRICS_FD_ENV
from unicornish.worker.kinds import kind_module

PROG = "unicornish"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not the usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return option.convert(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.name
    return convert


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="A Unicorn-style master: keeps N workers running your app's worker_start().",
        epilog="Signals: TTIN/TTOU +/-1 worker, HUP reload, QUIT graceful stop, "
        "INT/TERM quick stop, USR1 reopen logs, USR2 re-exec, WINCH stop workers. "
        "Also: unicornish status --help, unicornish ctl --help.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    for option in OPTIONS:
        names = ([option.short] if option.short else []) + [option.flag_name]
        # argparse %-formats help texts: a literal % is written %%.
        shown = option.full_help.replace("%", "%%")
        if option.is_flag:
            parser.add_argument(*names, dest=option.name, action="store_true", help=shown)
        elif option.repeatable:
            parser.add_argument(
                *names, dest=option.name, action="append", metavar=option.metavar, help=shown
            )
        else:
            parser.add_argument(
                *names,
                dest=option.name,
                type=_argparse_type(option),
                metavar=option.metavar,
                help=shown,
            )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def parse_cli(argv: list[str]) -> dict[str, Any]:
    values = vars(build_parser().parse_args(argv))
    if "listen" in values:
        values["listen"] = [item for item in values["listen"]]
        for spec in values["listen"]:
            sockets_module.parse_address(spec)  # a bad address is a usage error
    if values.get("metrics"):
        sockets_module.parse_address(values["metrics"], "--metrics")
    if not any(option.name in values for option in APP_OPTIONS) and "config" not in values:
        flags = one_of(option.flag_name for option in APP_OPTIONS)
        raise UsageError(f"the following arguments are required: {flags}")
    return values


# The terminal's stderr, kept before --log-file takes fd 2 over, so that an
# error at start-up is seen by whoever started us, not only in the log.
_startup_stderr = 2


def _die(message: str, code: int) -> NoReturn:
    line = log.printable(f"{PROG}: error: {message}\n").encode()
    try:
        os.write(_startup_stderr, line)
    except OSError:
        pass
    if _startup_stderr != 2 and not _same_file(_startup_stderr, 2):
        try:
            os.write(2, line)  # the log file gets it too
        except OSError:
            pass
    raise SystemExit(code)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return True
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def probe_app(kind: str, spec: str, identity: Identity | None = None, load: bool = True) -> None:
    """Load the app once in a throwaway child, so that a broken app stops us
    before any worker is forked, without running the app's code in the master.
    With --user the child first becomes that user, as a worker will: a user
    that cannot be switched to, or cannot read the app, stops the start too."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    log.flush_stdio()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            if identity is not None:
                try:
                    privileges.drop(identity)
                except OSError as exc:
                    os.write(write_fd, privileges.drop_error(identity, exc).encode()[:4000])
                    os._exit(1)
            if load:
                kind_module(kind).load(spec, None)
        except app_module.AppError as exc:
            os.write(write_fd, log.printable(str(exc)).encode()[:4000])
            code = 1
        except BaseException as exc:  # noqa: BLE001 - anything else is still one line
            message = f"cannot load app {spec}: {exc!r}"  # spec may hold surrogates
            os.write(write_fd, log.printable(message).encode()[:4000])
            code = 1
        finally:
            log.flush_stdio()
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        data = os.read(read_fd, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    _pid, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode("utf-8", "replace").strip()
    if message:
        raise StartupError(message)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise StartupError(f"cannot load app {spec}: loading it ended the process")


def prepare(settings: Settings, identity: Identity | None = None) -> app_module.App | None:
    """Everything that can fail before the master starts, in order."""
    spec = settings.app_spec
    check = getattr(kind_module(settings.kind), "check", None)
    if check is not None:
        check(settings)  # e.g. --asgi without its extra installed: before any fork
    if settings.pid:
        warning = pidfile.check(settings.pid)
        if warning:
            log.get_logger().warning("%s", warning)
        pidfile.check_writable(settings.pid)
    if settings.log_file:
        try:
            log.open_log_file(settings.log_file)
        except OSError as exc:
            raise StartupError(
                f"cannot open log file {settings.log_file}: {exc.strerror or exc}"
            ) from None
        chown_error = privileges.chown_for_workers(settings.log_file, identity)
        if chown_error:
            raise StartupError(chown_error)
    if settings.preload:
        if identity is not None:
            probe_app(settings.kind, spec, identity, load=False)
        try:
            return kind_module(settings.kind).load(spec, None)
        except app_module.AppError as exc:
            raise StartupError(str(exc)) from None
    probe_app(settings.kind, spec, identity)
    return None


def run_master(argv: list[str]) -> int:
    from unicornish.host import daemon
    from unicornish.master import upgrade as reexec
    from unicornish.master.master import Master

    try:
        cli_values = parse_cli(argv)
    except UsageError as exc:
        _die(str(exc), 2)
    try:
        settings, warnings = build_settings(cli_values)
        identity = privileges.resolve(settings.user) if settings.user else None
    except StartupError as exc:
        _die(str(exc), 1)
    global _startup_stderr
    ready_fd: int | None = None
    # A USR2 re-exec of a -D master is in the background already (its parent
    # is the old master, which watches its pid): no second daemonizing.
    if settings.daemonize and os.environ.get(reexec.OLD_MASTER_ENV) != str(os.getppid()):
        if not settings.log_file:
            warning = f"{PROG}: warning: -D without --log-file: output goes to /dev/null\n"
            os.write(2, warning.encode())
        ready_fd = daemon.daemonize()
        os.write(ready_fd, f"PID {os.getpid()}\n".encode())
    log.setup()
    log.set_format(settings.log_format)
    if ready_fd is not None:
        _startup_stderr = ready_fd  # errors go back to the launching command
    else:
        try:
            _startup_stderr = os.dup(2)
            os.set_inheritable(_startup_stderr, False)
        except OSError:
            _startup_stderr = 2
    try:
        app, listeners, control_sock, metrics_sock = set_up(settings, identity)
    except (StartupError, UsageError) as exc:
        _die(str(exc), exc.exit_code)
    if _startup_stderr not in (2, ready_fd):
        os.close(_startup_stderr)
    _startup_stderr = 2
    master = Master(
        settings,
        cli_values,
        app,
        listeners,
        warnings,
        identity,
        ready_fd,
        control_sock,
        metrics_sock,
    )
    return master.run()


def set_up(
    settings: Settings, identity: Identity | None
) -> tuple[app_module.App | None, list[socket.socket], socket.socket | None, socket.socket | None]:
    """The app (with --preload), the listeners, the control and metrics sockets;
    raises StartupError/UsageError, leaving no socket file behind."""
    from unicornish.ctl import server as control
    from unicornish.host.listeners import setup_listeners

    control_sock = None
    metrics_sock: socket.socket | None = None
    metrics_bound = False
    if not settings.metrics and METRICS_FD_ENV in os.environ:
        from unicornish.metrics import endpoint as metrics_http

        metrics_http.discard_inherited()
    app = prepare(settings, identity)
    if settings.control:
        control_sock = control.bind(settings.control)
    try:
        if settings.metrics:
            metrics_sock, metrics_bound = bind_metrics(settings.metrics)
        listeners = setup_listeners(settings.listen)
        if not listeners and getattr(kind_module(settings.kind), "NEEDS_LISTENERS", False):
            raise UsageError(f"{settings.app_option.flag_name} needs at least one --listen address")
    except (StartupError, UsageError):
        if control_sock is not None and settings.control:
            control_sock.close()
            os.unlink(settings.control)
        if metrics_sock is not None:
            close_metrics(metrics_sock, unlink=metrics_bound)
        raise
    return app, listeners, control_sock, metrics_sock


def bind_metrics(spec: str) -> tuple[socket.socket, bool]:
    """The --metrics socket: the old master's (USR2), or bound here (True)."""
    from unicornish.metrics import endpoint as metrics_http

    sock = metrics_http.inherited(spec)
    if sock is not None:
        return sock, False
    return metrics_http.bind(spec), True


def close_metrics(sock: socket.socket, unlink: bool) -> None:
    """A start that failed after binding --metrics unix:PATH leaves no file
    behind (unless the old master of a USR2 bound it: it still serves there)."""
    path = sock.getsockname() if unlink and sock.family == socket.AF_UNIX else ""
    sock.close()
    if isinstance(path, str) and path:
        try:
            os.unlink(path)
        except OSError:
            pass


def ensure_stdio() -> None:
    """Started with fd 0, 1 or 2 closed, the master would hand those numbers to
    its own pipes and sockets, then write its log lines into them (fd 2): put
    /dev/null there first."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: list[str] | None = None) -> NoReturn:
    ensure_stdio()
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] in ("status", "ctl"):
            from unicornish.ctl import client as ops

            code = ops.main(args)
        else:
            code = run_master(args)
            # The master is done (workers reaped, pid file gone, "master exited"
            # logged): skip interpreter finalisation, which took 30-90 ms of a
            # graceful stop, as the workers already do.
            log.flush_stdio()
            os._exit(code)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
