"""--asgi's pure parts: MODULE:NAME, its options' values, status labels, limits."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from unicornish import config
from unicornish.app import AppError, load_callable, split_spec
from unicornish.worker.httpmetrics import status_label
from unicornish.worker.middleware import Requests, last_line


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("main", ("main", "app", False)),
        ("main:api", ("main", "api", False)),
        ("pkg.web:create()", ("pkg.web", "create", True)),
        ("site/main.py", ("site/main.py", "app", False)),
        ("site/main.py:api", ("site/main.py", "api", False)),
        ("odd:dir/main.py", ("odd:dir/main.py", "app", False)),
    ],
)
def test_split_spec(spec: str, expected: tuple[str, str, bool]) -> None:
    assert split_spec(spec, "app") == expected


@pytest.mark.parametrize("spec", ["main:", "main:a-b", ":app", "main:app()()"])
def test_split_spec_refuses(spec: str) -> None:
    with pytest.raises(AppError):
        split_spec(spec, "app")


def test_load_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "webmod.py").write_text(
        textwrap.dedent(
            """
            async def app(scope, receive, send): pass
            def make(): return app
            def broken(): raise ValueError("no config")
            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    module, target = load_callable("webmod", "app")
    assert target is module.app
    assert load_callable("webmod:make()", "app")[1].__name__ == "app"
    for spec, why in (
        ("webmod:nothing", "has no 'nothing'"),
        ("webmod:NOT_CALLABLE", "NOT_CALLABLE is not callable"),
        ("webmod:broken()", "broken() raised ValueError: no config"),
        ("webmod:NOT_CALLABLE()", "cannot call NOT_CALLABLE()"),
        ("nosuchmodule:app", "app module not found"),
    ):
        with pytest.raises(AppError, match=None) as raised:
            load_callable(spec, "app")
        assert why in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("keepalive", "0", 0.0),
        ("access_log", "json", "json"),
        ("forwarded_allow_ips", " 10.0.0.1 , 10.0.0.2", "10.0.0.1,10.0.0.2"),
        ("forwarded_allow_ips", "*", "*"),
        ("root_path", "/api/", "/api"),
        ("root_path", "", None),
        ("ws_ping_interval", "0", None),
        ("ws_ping_timeout", "2.5", 2.5),
        ("limit_concurrency", "0", None),
        ("lifespan", "on", "on"),
        ("limit_request_line", "100", 100),
    ],
)
def test_option_values(name: str, value: str, expected: Any) -> None:
    assert config.convert_option(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("keepalive", "-1"),
        ("access_log", "yes"),
        ("forwarded_allow_ips", "1.2.3.4,,"),
        ("root_path", "api"),
        ("lifespan", "maybe"),
        ("limit_request_fields", "0"),
        ("ws_max_size", "0"),
    ],
)
def test_bad_option_values(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        config.convert_option(name, value)


def test_asgi_chooses_its_kind() -> None:
    settings, _ = config.build_settings({"asgi": "main:app"})
    assert settings.kind == "unicornish.worker.asgi" and settings.app_spec == "main:app"
    with pytest.raises(config.StartupError, match="give one app, not --app and --asgi"):
        config.build_settings({"asgi": "main:app", "app": "x.py"})


def test_status_labels() -> None:
    assert [status_label(s) for s in (200, 404, 418, 599, 99, 700)] == [
        "200",
        "404",
        "4xx",
        "5xx",
        "other",
        "other",
    ]


def test_last_line() -> None:
    text = "Traceback (most recent call last):\n  File x\nRuntimeError: db down\n\n"
    assert last_line(text) == "RuntimeError: db down"
    assert last_line("") == ""


def limits(**values: Any) -> Requests:
    settings = config.Settings().with_values(values)
    board = SimpleNamespace(tasks=[0], record_durations=False)
    worker = SimpleNamespace(settings=settings, board=board, max_tasks=None, refork_at=0)
    return Requests(worker, None, None, None)  # type: ignore[arg-type]


def scope(path: str = "/", query: bytes = b"", headers: Any = ()) -> dict[str, Any]:
    return {
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": list(headers),
    }


def test_request_limits() -> None:
    requests = limits(limit_request_line=30, limit_request_fields=2, limit_request_field_size=20)
    # `GET /abcd HTTP/1.1` is 19 bytes; with `?q` 21.
    assert requests.over_limits(scope("/abcd", b"q")) == 0
    assert requests.over_limits(scope("/" + "a" * 20)) == 414
    assert requests.over_limits(scope(headers=[(b"a", b"1")] * 3)) == 431
    # `name: value` is 20 bytes: allowed; 21 is not.
    assert requests.over_limits(scope(headers=[(b"name", b"v" * 14)])) == 0
    assert requests.over_limits(scope(headers=[(b"name", b"v" * 15)])) == 431


def test_the_master_compiles_the_module_file_of_module_name(tmp_path: Path) -> None:
    from unicornish.app import refresh_compiled

    path = tmp_path / "site.py"
    path.write_text("async def api(scope, receive, send): pass\n")
    compiled = refresh_compiled(f"{path}:api", None)
    assert compiled is not None and compiled.path == str(path)
    assert refresh_compiled("pkg.site:api", None) is None  # a dotted module: not compiled


def test_builtin_metric_names_are_the_kinds_only() -> None:
    from unicornish.metrics import appmetrics

    with pytest.raises(appmetrics.MetricsError, match="is the master's"):
        appmetrics.Registry().counter("unicornish_http_requests", "an app cannot take it")
    with pytest.raises(appmetrics.MetricsError, match="not a built-in metric"):
        appmetrics.builtin_metric(appmetrics.GAUGE, "unicornish_other", "no")
    record = appmetrics.Decl(
        "unicornish_websockets_open", appmetrics.GAUGE, "open", (), ((),), (), 0
    ).record()
    assert appmetrics.Decl.parse(record).name == "unicornish_websockets_open"
    other = record.replace(b"unicornish_websockets_open", b"unicornish_workers_busy")
    with pytest.raises(appmetrics.MetricsError):
        appmetrics.Decl.parse(other)
