"""Options of the chaos suite: `--soak` turns the short runs of `make check`
into the long ones of `make soak`, which also write docs/RELIABILITY.md."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unicornish chaos")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="long chaos and leak runs; their figures go into docs/RELIABILITY.md",
    )
    group.addoption(
        "--soak-seconds",
        type=float,
        default=90.0,
        help="how long each chaos scenario runs under --soak (default 90)",
    )


def _option(config: pytest.Config, name: str, default: object) -> object:
    # Under a plain `pytest` run this conftest is loaded late and its options
    # were never parsed: fall back to the defaults (the short runs).
    try:
        return config.getoption(name)
    except ValueError:
        return default


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(_option(request.config, "soak", False))


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    return float(_option(request.config, "soak_seconds", 90.0))  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak_only: runs only under --soak (writes the docs)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _option(config, "soak", False):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("soak_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
