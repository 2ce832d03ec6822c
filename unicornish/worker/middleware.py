"""The ASGI middleware --asgi puts between uvicorn and the app: the master's bookkeeping.

uvicorn runs the protocol; this ASGI layer between uvicorn and the app keeps
the scoreboard and the metrics, applies the shared HTTP limits, marks
responses `connection: close` while the worker drains, and closes open
WebSockets with 1001 when the worker retires. It is plain ASGI, so it works
the same with each of uvicorn's HTTP and WebSocket implementations.

One HTTP request is one task on the scoreboard, counted by worker.task_done()
with the request's own duration: worker.task_started() is not used, as it
keeps one start time and one heartbeat per worker while an event loop has
many requests in flight at once. The heartbeat is the event loop's tick (asgi.py), and the
worker is BUSY while at least one request is in flight, IDLE otherwise.
Open WebSockets are not requests: they are counted on their own and do not
keep a worker busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from unicornish.host import log
from unicornish.metrics import appmetrics
from unicornish.scoreboard import BUSY, IDLE
from unicornish.worker import httpmetrics
from unicornish.worker.process import Worker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GOING_AWAY = 1001
_CLOSE_HEADER = (b"connection", b"close")


class Retired(OSError):
    """A send on a WebSocket this worker closed (1001) when it retired.

    An OSError, as uvicorn's own ClientDisconnected is: frameworks turn it
    into their disconnect (Starlette: WebSocketDisconnect)."""


class _Metrics:
    """unicornish_http_* in the worker's arena, summed by the master."""

    def __init__(self) -> None:
        self.count_request = httpmetrics.request_counter()
        self.duration = httpmetrics.request_duration()
        self.in_flight = cast(
            appmetrics.Gauge,
            appmetrics.builtin_metric(
                appmetrics.GAUGE, "unicornish_http_requests_in_flight", "HTTP requests in progress"
            ),
        )
        self.websockets = cast(
            appmetrics.Gauge,
            appmetrics.builtin_metric(
                appmetrics.GAUGE, "unicornish_websockets_open", "WebSocket connections open"
            ),
        )


class Requests:
    """The ASGI app uvicorn calls: the user's app (`inner`, behind the proxy-header
    handling) with the worker's bookkeeping around each request."""

    def __init__(
        self,
        worker: Worker,
        inner: ASGIApp,
        unix_inner: ASGIApp,
        lifespan_app: ASGIApp,
    ) -> None:
        settings = worker.settings
        self.worker = worker
        self.inner = inner  # TCP peers: X-Forwarded-* from --forwarded-allow-ips only
        self.unix_inner = unix_inner  # unix-socket peers (no address): always trusted
        self.lifespan_app = lifespan_app
        self.board = worker.board
        self.record = self.board.record_durations
        self.metrics = _Metrics() if self.record else None
        self.max_line = settings.limit_request_line
        self.max_fields = settings.limit_request_fields
        # A field line is `name: value`: the two bytes of ': ' count too.
        self.max_field = settings.limit_request_field_size - 2
        self.access = settings.access_log
        # Each request's start time and status are needed (metrics, access log).
        self.timed = self.record or self.access != "off"
        # Every response says `connection: close` (keepalive 0, or draining).
        self.closing = settings.keepalive == 0
        self.in_flight = 0
        # --max-tasks reached: the server stops taking work (asgi.py reads it).
        self.exhausted = False
        self.websockets: dict[int, asyncio.Future[None]] = {}
        self.startup_failure: str | None = None

    # -- dispatch --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    # -- HTTP --

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        board = self.board
        self.in_flight += 1
        if self.in_flight == 1:
            board.state[0] = BUSY
        started = time.monotonic() if self.timed else 0.0
        app = self.inner if scope.get("client") else self.unix_inner
        refused = self.over_limits(scope)
        if not (refused or self.timed or self.closing):
            # Nothing to see in the response: uvicorn's own send, no layer on it.
            try:
                await app(scope, receive, send)
            finally:
                self.finished(scope, started, 0)
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight.set(self.in_flight)
        status = 0

        async def reply(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.closing:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), _CLOSE_HEADER]
            await send(message)

        try:
            if refused:
                await self.refuse(refused, reply)
            else:
                await app(scope, receive, reply)
        except BaseException:
            if not status:
                status = 500  # uvicorn answers 500 for an app that raised before replying
            raise
        finally:
            self.finished(scope, started, status)

    def over_limits(self, scope: Scope) -> int:
        """414 or 431 when the request passes --limit-request-*, else 0."""
        query = scope.get("query_string", b"")
        # `METHOD SP target SP HTTP/x.y`
        line = len(scope["method"]) + len(scope.get("raw_path") or scope["path"]) + 11
        if query:
            line += len(query) + 1
        if line > self.max_line:
            return 414
        headers = scope["headers"]
        if len(headers) > self.max_fields:
            return 431
        biggest = self.max_field
        for name, value in headers:
            if len(name) + len(value) > biggest:
                return 431
        return 0

    @staticmethod
    async def refuse(status: int, send: Send) -> None:
        body = b"Request line too long\n" if status == 414 else b"Request header too large\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def finished(self, scope: Scope, started: float, status: int) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.board.state[0] = IDLE
        metrics = self.metrics
        took = None
        if metrics is not None:
            took = time.monotonic() - started
            metrics.count_request(scope["method"], status)
            metrics.duration(took)
            metrics.in_flight.set(self.in_flight)
        if self.access != "off":
            self.log_access(scope, started, status)
        if self.worker.task_done(took, "requests"):
            self.exhausted = True

    def log_access(self, scope: Scope, started: float, status: int) -> None:
        took = time.monotonic() - started
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "unix"
        path = scope["path"]  # root_path included, as ASGI has it
        query = scope.get("query_string", b"")
        target = f"{path}?{query.decode('latin-1')}" if query else path
        method = scope["method"]
        version = scope.get("http_version", "1.1")
        self.worker.log.info(
            'worker[%d] %s "%s %s HTTP/%s" %d %.1fms',
            self.worker.nr,
            peer,
            method,
            target,
            version,
            status,
            took * 1000,
            extra=log.event(
                "http_request",
                nr=self.worker.nr,
                client=peer,
                method=method,
                path=target,
                http_version=version,
                status=status,
                duration=round(took, 6),
            ),
        )

    # -- WebSocket --

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.over_limits_ws(scope):
            await send({"type": "websocket.close", "code": 1008})  # uvicorn answers 403
            return
        loop = asyncio.get_running_loop()
        retire: asyncio.Future[None] = loop.create_future()
        key = id(retire)
        accepted = False
        closed = False
        closing: asyncio.Future[None] | None = None
        metrics = self.metrics

        def going_away(_retired: object = None) -> None:
            # The retirement's close, sent through uvicorn so that its protocol does
            # the closing handshake. Awaited before the app hears of it, and before
            # the app's return reaches uvicorn (which drops a connection whose app
            # returned without a close).
            nonlocal closed, closing
            if closing is None and accepted and not closed:
                closed = True
                closing = asyncio.ensure_future(
                    send({"type": "websocket.close", "code": GOING_AWAY, "reason": ""})
                )

        async def closed_by_us() -> Message:
            going_away()
            if closing is not None:
                await asyncio.wait((closing,))
            return {"type": "websocket.disconnect", "code": GOING_AWAY}

        async def incoming() -> Message:
            if retire.done():
                return await closed_by_us()
            message = asyncio.ensure_future(receive())
            await asyncio.wait((message, retire), return_when=asyncio.FIRST_COMPLETED)
            if message.done():
                return message.result()
            message.cancel()
            return await closed_by_us()

        async def outgoing(message: Message) -> None:
            nonlocal accepted, closed
            if retire.done():
                if message["type"] == "websocket.close":
                    return  # closed already, with 1001
                raise Retired("the WebSocket was closed (1001): the worker is retiring")
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                self.websockets[key] = retire
                if metrics is not None:
                    metrics.websockets.inc()
            elif message["type"] == "websocket.close":
                closed = True
            await send(message)

        retire.add_done_callback(going_away)
        try:
            app = self.inner if scope.get("client") else self.unix_inner
            await app(scope, incoming, outgoing)
        finally:
            if closing is not None:
                await asyncio.wait((closing,))
            if self.websockets.pop(key, None) is not None and metrics is not None:
                metrics.websockets.dec()

    def over_limits_ws(self, scope: Scope) -> bool:
        headers = scope["headers"]
        if len(headers) > self.max_fields:
            return True
        return any(len(name) + len(value) > self.max_field for name, value in headers)

    def retire_websockets(self) -> int:
        """Close every open WebSocket with 1001 (going away); how many there were."""
        sessions = list(self.websockets.values())
        for retire in sessions:
            if not retire.done():
                retire.set_result(None)
        return len(sessions)

    # -- lifespan --

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's own lifespan; keeps a one-line reason for a failed startup."""

        async def reply(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                self.startup_failure = last_line(str(message.get("message") or "")) or (
                    "lifespan.startup.failed"
                )
            await send(message)

        try:
            await self.lifespan_app(scope, receive, reply)
        except BaseException as exc:
            if self.startup_failure is None:
                self.startup_failure = f"{type(exc).__name__}: {last_line(str(exc))}".rstrip(": ")
            raise


def last_line(text: str) -> str:
    """A traceback's last line (`RuntimeError: boom`), or the text's only one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
