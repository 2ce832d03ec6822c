"""The ASGI worker kind (--asgi MODULE:NAME): uvicorn's Server in each worker.

unicornish does not parse HTTP here: each worker runs uvicorn's `Server` on
the listeners it inherited from the master (as gunicorn's uvicorn worker
does), with uvloop and httptools when they are installed. What this module
adds is the master's protocol:

* ready() once the lifespan startup completed and the listeners serve; a
  failed startup is a failed boot (EXIT_BOOT_FAILED: crash backoff, a HUP
  rolled back), its reason in the log.
* The heartbeat is uvicorn's tick (every 0.1 s): a blocked event loop stops
  beating, and --timeout kills it with its traceback like a stuck task.
* QUIT (and --max-tasks, and a promotion to mold) is a graceful stop: stop
  accepting; each connection's next response says `connection: close`; a
  connection idle for a whole IDLE_LINGER is closed; in-flight requests and
  open WebSockets get until shortly before --graceful-timeout, when the
  WebSockets still open are closed with 1001 (going away); then the lifespan
  shutdown. TERM and INT exit at once (process.py).
* Per-request bookkeeping (scoreboard, metrics, limits): middleware.py.

uvicorn and the parts of it used here are imported only in a worker of this
kind: the core keeps its two dependencies (`pip install 'unicornish[asgi]'`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from unicornish.app import App, AppError, CompiledApp, load_callable, module_hooks
from unicornish.config import Settings
from unicornish.errors import StartupError
from unicornish.host import log
from unicornish.host.sockets import BACKLOG
from unicornish.protocol import EXIT_BOOT_FAILED, EXIT_OK
from unicornish.scoreboard import IDLE
from unicornish.worker.middleware import ASGIApp, Requests
from unicornish.worker.process import Worker

EXTRA_HINT = "--asgi needs uvicorn: pip install 'unicornish[asgi]'"
# While draining: a connection that stayed idle (no new request) this long is closed.
IDLE_LINGER = 1.0
# The retirement (1001 to open WebSockets) comes this long before --graceful-timeout
# ends (at most a quarter of it), so the closing handshake is done before SIGKILL
# even on a loaded host (the master's clock started a little before ours).
RETIRE_MARGIN = 1.0
# After the 1001s: how long their handshakes and the app's handlers get.
CLOSE_WAIT = 0.5
# Between looks at the connections while draining (uvicorn waits in steps of 0.1 s too).
DRAIN_STEP = 0.1
# How often the tick compares os.getppid() with the master (in ticks of 0.1 s).
_PARENT_CHECK_TICKS = 10


# The master refuses to start this kind without a listener (cli.set_up).
NEEDS_LISTENERS = True


def check(settings: Settings) -> None:
    """Before the probe forks: the extra is installed."""
    if importlib.util.find_spec("uvicorn") is None:
        raise StartupError(EXTRA_HINT)


def load(spec: str, compiled: CompiledApp | None) -> App:
    if importlib.util.find_spec("uvicorn") is None:
        raise AppError(EXTRA_HINT)
    module, target = load_callable(spec, "app", compiled)
    return App(spec=spec, module=module, entry=target, hooks=module_hooks(spec, module))


def serve(worker: Worker, app: App, ready: Callable[[], None]) -> int:
    route_uvicorn_logs()
    return run(_serve(worker, app, ready))


async def _serve(worker: Worker, app: App, ready: Callable[[], None]) -> int:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    settings = worker.settings
    user_app = app.entry
    trusted = cast(ASGIApp, ProxyHeadersMiddleware(user_app, settings.forwarded_allow_ips))
    always = cast(ASGIApp, ProxyHeadersMiddleware(user_app, "*"))
    requests = Requests(worker, trusted, always, user_app)
    server = _server_class()(uvicorn_config(settings, requests), worker, requests)
    # Copies of the listeners: uvicorn closes what it serves on, and a worker that
    # becomes the mold still hands the originals to its children.
    sockets = [sock.dup() for sock in worker.sockets]
    try:
        return await server.serve_worker(sockets, ready)
    finally:
        for sock in sockets:
            sock.close()


def uvicorn_config(settings: Settings, app: ASGIApp) -> Any:
    from uvicorn import Config

    config = Config(
        app,
        interface="asgi3",
        lifespan=settings.lifespan,  # type: ignore[arg-type]
        log_config=None,
        access_log=False,  # our own (--access-log), with the worker's number
        proxy_headers=False,  # applied in middleware.py, unix-socket peers trusted
        forwarded_allow_ips=settings.forwarded_allow_ips,
        root_path=settings.root_path or "",
        limit_concurrency=settings.limit_concurrency,
        backlog=BACKLOG,  # asyncio listen()s again on the socket: keep the master's
        timeout_keep_alive=settings.keepalive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=None,
        ws_max_size=settings.ws_max_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
    )
    config.load()
    return config


def route_uvicorn_logs() -> None:
    """uvicorn's warnings and errors (an app's exception, a failed lifespan) go to
    the worker's log, in its format; its info lines (startup chatter) do not."""
    handler = log.get_logger().handlers[0] if log.get_logger().handlers else None
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if handler is not None and name == "uvicorn" else []
        logger.propagate = name != "uvicorn"
        logger.setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True


def run(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run() with uvicorn's choice of loop (uvloop when installed)."""
    from uvicorn.loops.auto import auto_loop_factory

    loop = auto_loop_factory()()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _server_class() -> type[Any]:
    """Defined on first use: its base class is uvicorn's."""
    global _Server
    if _Server is None:
        _Server = _define_server()
    return _Server


_Server: type[Any] | None = None


def _define_server() -> type[Any]:
    from uvicorn.server import Server

    class WorkerServer(Server):
        """uvicorn's Server, started, ticked and stopped the master's way."""

        def __init__(self, config: Any, worker: Worker, requests: Requests) -> None:
            super().__init__(config)
            self.worker = worker
            self.requests = requests

        async def serve_worker(
            self, sockets: list[socket.socket], ready: Callable[[], None]
        ) -> int:
            worker = self.worker
            self.lifespan = self.config.lifespan_class(self.config)
            try:
                await self.startup(sockets=sockets)
            except SystemExit:
                # uvicorn's way of saying the lifespan startup failed (it logged why).
                why = self.requests.startup_failure or "the app's lifespan startup failed"
                worker.log.error("worker[%d] lifespan startup failed: %s", worker.nr, why)
                return EXIT_BOOT_FAILED
            board = worker.board
            board.state[0] = IDLE
            board.beat[0] = time.monotonic()
            ready()
            if not worker.stopping:
                await self.main_loop()
            await self.shutdown(sockets=sockets)
            return EXIT_OK

        async def on_tick(self, counter: int) -> bool:
            worker = self.worker
            worker.board.beat[0] = time.monotonic()
            if counter % _PARENT_CHECK_TICKS == 0 and os.getppid() != worker.master_pid:
                worker.check_master()
            if worker.stopping or self.requests.exhausted:
                return True
            return bool(await super().on_tick(counter))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            worker = self.worker
            requests = self.requests
            # Bounded by --graceful-timeout from here on, not by --timeout.
            worker.board.beat[0] = 0.0
            loop = asyncio.get_running_loop()
            grace = worker.settings.graceful_timeout
            retire_at = loop.time() + max(0.0, grace - min(RETIRE_MARGIN, grace / 4))
            for server in self.servers:
                server.close()
            requests.closing = True
            await self.drain(retire_at)
            if requests.retire_websockets():
                worker.log.info(
                    "worker[%d] closing open WebSockets (1001): --graceful-timeout", worker.nr
                )
                await self.wait_for(lambda: not self.server_state.tasks, CLOSE_WAIT)
            for task in list(self.server_state.tasks):
                task.cancel()
            if not self.force_exit:
                await self.lifespan.shutdown()

        async def drain(self, retire_at: float) -> None:
            """Until no connection is left, or the retirement is due."""
            loop = asyncio.get_running_loop()
            idle_since: dict[Any, tuple[Any, float]] = {}
            while not self.force_exit:
                now = loop.time()
                state = self.server_state
                http = [c for c in state.connections if hasattr(c, "cycle")]
                if not http and not state.tasks and not self.requests.websockets:
                    return
                if now >= retire_at:
                    return
                for conn in http:
                    cycle = conn.cycle
                    if cycle is not None and not cycle.response_complete:
                        idle_since.pop(conn, None)  # busy: its response says close
                        continue
                    seen = idle_since.get(conn)
                    if seen is None or seen[0] is not cycle:
                        idle_since[conn] = (cycle, now)
                    elif now - seen[1] >= IDLE_LINGER:
                        conn.shutdown()  # idle all along: no request is racing the close
                await asyncio.sleep(min(DRAIN_STEP, max(0.0, retire_at - now)))

        async def wait_for(self, done: Callable[[], bool], seconds: float) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while not done() and loop.time() < deadline:
                await asyncio.sleep(0.02)

    return WorkerServer
