"""A small Starlette app for the --asgi tests: HTTP routes, a streaming
response, a WebSocket echo and a lifespan (which fails when FAIL_STARTUP is set)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

VERSION = os.environ.get("APP_VERSION", "1")
STATE: dict[str, object] = {}


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # A file in the current directory (so that a HUP can bring it in) or the env.
    reason = os.environ.get("FAIL_STARTUP")
    if os.path.exists("FAIL_STARTUP"):
        with open("FAIL_STARTUP") as handle:
            reason = handle.read().strip()
    if reason:
        raise RuntimeError(reason)
    STATE["started"] = time.time()
    yield
    STATE.clear()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def info(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "pid": os.getpid(),
            "version": VERSION,
            "started": "started" in STATE,
            "client": request.client.host if request.client else None,
            "scheme": request.url.scheme,
            "root_path": request.scope.get("root_path", ""),
        }
    )


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow done")


async def block(request: Request) -> PlainTextResponse:
    time.sleep(float(request.query_params.get("s", "5")))  # blocks the event loop
    return PlainTextResponse("blocked")


async def stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("n", "5"))
    pause = float(request.query_params.get("s", "0.05"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(pause)

    return StreamingResponse(chunks(), media_type="text/plain")


async def status(request: Request) -> PlainTextResponse:
    return PlainTextResponse("status", status_code=int(request.path_params["code"]))


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"{os.getpid()} {text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/info", info),
        Route("/slow", slow),
        Route("/block", block),
        Route("/stream", stream),
        Route("/status/{code:int}", status),
        WebSocketRoute("/ws", echo),
    ],
    lifespan=lifespan,
)


def create_app() -> Starlette:
    return app
