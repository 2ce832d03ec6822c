"""Worker kinds: what a worker process runs once it is forked.

The master does not know which kind runs: it forks, watches the heartbeat page,
reads the reports and sends signals the same way for all. A kind is a module
under worker/ with two functions:

    load(spec, compiled) -> App
        Import the user's code and find what the kind calls. One line of
        AppError for anything wrong. Also runs in the master's throwaway probe
        before any fork, with --preload, and on HUP.

    serve(worker, app, ready) -> exit code
        The worker's life after its after_fork hooks. Call ready() once it can
        take work (the master counts it booted then); return EXIT_OK once
        `worker.alive` turns False (QUIT, TERM is handled for you, the master
        gone, or a promotion to mold: finish or hand back what is in progress
        first), or another code from protocol.py. Each unit of work is one
        task on the scoreboard: worker.task_started() / worker.task_done().

Optional, for a kind that needs them:

    check(settings) -> None
        Runs in the master before the probe forks: raise StartupError with
        one line (asgi.py: its extra is not installed).
    NEEDS_LISTENERS = True
        The master refuses to start without a --listen (or inherited) socket.

`worker.settings` is the release's Settings (the HTTP options, for one).

The option that names the app chooses the kind (config.Option.kind): --app runs
the task loop (tasks.py), --asgi uvicorn (asgi.py). Adding a kind is one module
here and one option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, cast

from unicornish.app import App, CompiledApp


class WorkerKind(Protocol):
    def load(self, spec: str, compiled: CompiledApp | None) -> App: ...

    # `worker` is the process.Worker that runs the kind; typed loosely here because
    # the worker process imports this seam, and each kind names Worker itself.
    def serve(self, worker: Any, app: App, ready: Callable[[], None]) -> int: ...


def kind_module(module_name: str) -> WorkerKind:
    """The kind implemented by `module_name` (config.Option.kind), imported on
    first use: a task worker never imports an HTTP parser."""
    return cast(WorkerKind, importlib.import_module(module_name))
