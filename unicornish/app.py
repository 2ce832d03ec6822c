"""Loading the user's app: a .py file or a dotted module, always into a fresh module.

A fresh module object (never importlib.reload) means a failed reload leaves
the running app untouched, and a successful one replaces it whole.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType
from typing import Any

from unicornish.host.log import printable
from unicornish.protocol import HOOK_NAMES

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class AppError(Exception):
    """The app cannot be loaded; the message is one line for the user."""


def is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def describe(spec: str) -> str:
    """The short name shown in process titles and status: `app.py` or `pkg.tasks`.

    A file name that is not UTF-8 (b'app\\xff.py') reaches us with surrogate
    escapes, which no title, log line or JSON reader can take: show U+FFFD there.
    """
    return printable(os.path.basename(spec) if is_path(spec) else spec)


@dataclass
class App:
    """A loaded app: its module, the entry point its worker kind calls (worker_start
    for --app, the WSGI or ASGI callable for the HTTP kinds) and its hooks."""

    spec: str
    module: ModuleType
    entry: Callable[..., Any]
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class CompiledApp:
    """An app file compiled once in the master, handed to every worker by the fork.

    Compiling is not running: the master never executes it. `source` is what
    `code` was compiled from; a worker uses `code` only when the file holds
    those very bytes now, so a new worker still runs the file as it is on disk.
    `stamp` is the file's stat when it was read: cheap to compare before a fork.
    """

    path: str  # absolute, as the worker's loader names it
    source: bytes
    code: CodeType
    stamp: tuple[int, ...]


def file_stamp(path: str) -> tuple[int, ...] | None:
    """What changes when a file is rewritten, even in place with its old size and
    mtime (rsync -a, cp -p): ctime cannot be set back. None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def compile_app(spec: str) -> CompiledApp:
    """Read and compile an app file exactly as a worker's loader would (same
    file name, same flags). Raises OSError, SyntaxError or ValueError."""
    absolute = os.path.abspath(spec)
    stamp = file_stamp(absolute) or ()  # before the read: a later edit shows as a new stamp
    with open(absolute, "rb") as handle:
        source = handle.read()
    return CompiledApp(absolute, source, _compile(source, absolute), stamp)


def refresh_compiled(spec: str, current: CompiledApp | None) -> CompiledApp | None:
    """`current` while the file is unchanged, else compiled anew; None when the file
    cannot be compiled now (each worker then compiles it and reports the error)."""
    try:
        spec = split_spec(spec, "")[0]  # --asgi's MODULE:NAME: the module's file
    except AppError:
        return None
    if not is_path(spec):
        return None  # a dotted module is found by importing its package: app code
    if current is not None and file_stamp(current.path) == current.stamp:
        return current
    try:
        return compile_app(spec)
    except (OSError, SyntaxError, ValueError):
        return None


def _compile(source: bytes, filename: str) -> CodeType:
    return compile(source, filename, "exec", dont_inherit=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    text = str(exc).strip().splitlines()
    detail = f": {text[0]}" if text else ""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}{detail}{where}"


def _module_name_for(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() else "unicornish_app"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__unicornish_app__", None) != path:
        # Never shadow a real module (an app called http.py or test.py).
        name = f"unicornish_app_{name}"
    return name


def _exec_module(
    spec: importlib.machinery.ModuleSpec, module: ModuleType, compiled: CompiledApp | None = None
) -> None:
    """Run the module's code compiled from its source as it is now.

    Not through __pycache__: a .pyc is trusted when the source's mtime (in
    whole seconds) and size match, so an app edited within the same second, or
    deployed with its old mtime kept (rsync -a, tar, cp -p), would run stale
    code after a HUP. The master's `compiled` code is used only when the file
    holds the bytes it was compiled from: reading is cheap, compiling is not.
    """
    loader = spec.loader
    origin = spec.origin
    if isinstance(loader, importlib.machinery.SourceFileLoader) and origin:
        source = loader.get_data(origin)
        if compiled is not None and compiled.path == origin and compiled.source == source:
            code = compiled.code
        else:
            code = _compile(source, origin)
        exec(code, module.__dict__)
    elif loader is not None:
        loader.exec_module(module)


def _install_fresh(
    name: str, spec: ModuleSpec, module: ModuleType, compiled: CompiledApp | None = None
) -> ModuleType:
    """Run a fresh module under `name`; on failure the previous one is put back."""
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        _exec_module(spec, module, compiled)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    return module


def _exec_path(path: str, compiled: CompiledApp | None = None) -> ModuleType:
    absolute = os.path.abspath(path)
    if not os.path.exists(absolute):
        raise AppError(f"app file not found: {path}")
    if os.path.isdir(absolute):
        raise AppError(f"app is a directory, not a .py file: {path}")
    if not os.access(absolute, os.R_OK):
        raise AppError(f"app file is not readable: {path}")
    directory = os.path.dirname(absolute)
    if directory not in sys.path:
        # Like `python app.py`: the app can import modules that sit beside it.
        sys.path.insert(0, directory)
    name = _module_name_for(absolute)
    spec = importlib.util.spec_from_file_location(name, absolute)
    if spec is None or spec.loader is None:
        raise AppError(f"cannot load app file: {path}")
    module = importlib.util.module_from_spec(spec)
    module.__unicornish_app__ = absolute  # type: ignore[attr-defined]
    return _install_fresh(name, spec, module, compiled)


def _not_a_module(name: str, why: str) -> AppError:
    """`--app somedir` (no '/', no .py) is taken for a module name; when no module
    answers to it but a directory does, say that, not "module not found"."""
    if os.path.isdir(name):
        return AppError(f"app is a directory, not a .py file or a module: {name}")
    return AppError(why)


def _exec_dotted(name: str) -> ModuleType:
    if not _DOTTED.match(name):
        why = f"app must be a .py file or a dotted module name, got {name!r}"
        raise _not_a_module(name, why)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    parent = name.rpartition(".")[0]
    try:
        if parent:
            importlib.import_module(parent)
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        raise _not_a_module(name, f"app module not found: {exc.name or name}") from None
    if spec is None or spec.loader is None:
        # loader None: a namespace package, which is what a plain directory imports as.
        raise _not_a_module(name, f"app module not found: {name}")
    module = importlib.util.module_from_spec(spec)
    return _install_fresh(name, spec, module)


def load_module(spec: str, compiled: CompiledApp | None = None) -> ModuleType:
    """Run the app's module afresh (with the master's `compiled` code when the file
    still holds its source). Raises AppError with a one-line reason."""
    try:
        return _exec_path(spec, compiled) if is_path(spec) else _exec_dotted(spec)
    except AppError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the user's import can raise anything
        raise AppError(f"cannot load app {spec}: {_one_line(exc)}") from exc


def module_hooks(spec: str, module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The hooks an app module defines (after_fork, worker_exit, ...), checked."""
    hooks = {}
    for name in HOOK_NAMES:
        hook = getattr(module, name, None)
        if hook is not None:
            if not callable(hook):
                raise AppError(f"app {spec}: {name} is not a function")
            check_one_argument(spec, name, hook)
            hooks[name] = hook
    return hooks


def load_app(spec: str, compiled: CompiledApp | None = None) -> App:
    """--app: a module with worker_start(worker), and its hooks."""
    module = load_module(spec, compiled)
    worker_start = getattr(module, "worker_start", None)
    if worker_start is None:
        raise AppError(f"app {spec} has no worker_start(worker) function")
    if not callable(worker_start):
        raise AppError(f"app {spec}: worker_start is not a function")
    check_one_argument(spec, "worker_start", worker_start)
    return App(spec=spec, module=module, entry=worker_start, hooks=module_hooks(spec, module))


def check_one_argument(spec: str, name: str, function: Callable[..., Any]) -> None:
    """worker_start and the hooks are called with one argument: say so before any
    fork, instead of a crash loop of TypeErrors."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: let it run
    try:
        signature.bind(None)
    except TypeError:
        what = "the master" if name == "before_exec" else "the worker"
        raise AppError(f"app {spec}: {name}{signature} must take one argument ({what})") from None


def split_spec(spec: str, default_name: str) -> tuple[str, str, bool]:
    """`MODULE:NAME` -> (MODULE, NAME, called): NAME defaults to `default_name`,
    and `NAME()` means a factory called with no arguments. MODULE is a .py path
    or a dotted module name, as for --app. The last ':' splits only when what
    follows is a name (a path may hold ':' too)."""
    module, sep, name = spec.rpartition(":")
    if not sep or os.sep in name or name.endswith(".py"):
        return spec, default_name, False
    called = name.endswith("()")
    bare = name[:-2] if called else name
    if not bare.isidentifier():
        raise AppError(f"app {spec!r}: expected MODULE:NAME or MODULE:NAME() after ':'")
    if not module:
        raise AppError(f"app {spec!r}: no module before ':'")
    return module, bare, called


def load_callable(
    spec: str, default_name: str, compiled: CompiledApp | None = None
) -> tuple[ModuleType, Callable[..., Any]]:
    """--asgi (and --wsgi) `MODULE:NAME`: run the module afresh (rules and errors
    as --app) and return it with the callable NAME names, or what `NAME()`
    returns. Raises AppError with a one-line reason."""
    module_spec, name, called = split_spec(spec, default_name)
    module = load_module(module_spec, compiled)
    target = getattr(module, name, None)
    if target is None:
        raise AppError(f"app {spec}: module {describe(module_spec)} has no {name!r}")
    if called:
        if not callable(target):
            raise AppError(f"app {spec}: {name} is not a function, cannot call {name}()")
        try:
            target = target()
        except BaseException as exc:  # noqa: BLE001 - the user's factory can raise anything
            raise AppError(f"app {spec}: {name}() raised {_one_line(exc)}") from exc
        name = f"{name}()"
    if not callable(target):
        raise AppError(f"app {spec}: {name} is not callable (got {type(target).__name__})")
    return module, target
