"""Fixtures of the chaos suite: `--soak` (an option of tests/conftest.py, so that
pytest knows it from the repository root too) turns the short runs of
`make check` into the long ones of `make soak`, which also write
docs/RELIABILITY.md."""

from __future__ import annotations

import pytest


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("soak"))


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("soak_seconds"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak_only: runs only under --soak (writes the docs)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("soak"):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("soak_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
