"""unicornish: a Unicorn-faithful prefork process master for Python."""

from __future__ import annotations

from types import ModuleType

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    # `from unicornish import appmetrics` is the documented way for an app to
    # reach its metrics; the module lives with the rest of metrics/ and is
    # imported only by apps that ask for it.
    if name == "appmetrics":
        from unicornish.metrics import appmetrics

        return appmetrics
    raise AttributeError(f"module 'unicornish' has no attribute {name!r}")
