"""The request metrics both HTTP kinds (--wsgi, --asgi) keep, declared once.

They live in the worker's app-metrics arena under the master's prefix
(appmetrics.builtin_metric), so the master sums them over workers and keeps
them across deaths like an app's own. Label values are fixed at declaration:
a method or status a client or an app makes up falls under `other` or its
class (`4xx`), so no one can grow the series without bound.
"""

from __future__ import annotations

from collections.abc import Callable

from unicornish.metrics import appmetrics

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
# Counted under their own label; any other code under its class. Each is a
# series per method, and an arena holds 512 series with the app's own: a few.
COMMON_STATUSES = (200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 422, 429, 500, 502, 503)
STATUSES = (*map(str, COMMON_STATUSES), "1xx", "2xx", "3xx", "4xx", "5xx", "other")
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_KNOWN_METHODS = frozenset(METHODS)


def status_label(code: int) -> str:
    if code in COMMON_STATUSES:
        return str(code)
    return f"{code // 100}xx" if 100 <= code <= 599 else "other"


def method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "other"


def request_counter() -> Callable[[str, int], None]:
    """unicornish_http_requests_total{method,status}: count(method, status code)."""
    counter = appmetrics.builtin_metric(
        appmetrics.COUNTER,
        "unicornish_http_requests",
        "HTTP requests answered, by method and status (a common code, else its class: 4xx)",
        {"method": METHODS, "status": STATUSES},
    )
    # Every (method, code) a response can have, resolved once: a request costs a lookup.
    incs = {
        (method, code): counter.labels(method=method, status=status_label(code)).inc
        for method in METHODS
        for code in range(100, 600)
    }
    others = {method: counter.labels(method=method, status="other").inc for method in METHODS}

    def count(method: str, code: int) -> None:
        label = method if method in _KNOWN_METHODS else "other"
        inc = incs.get((label, code))
        (inc or others[label])()

    return count


def request_duration() -> Callable[[float], None]:
    """unicornish_http_request_duration_seconds: observe(seconds)."""
    histogram = appmetrics.builtin_metric(
        appmetrics.HISTOGRAM,
        "unicornish_http_request_duration_seconds",
        "Time from a request's complete head to the end of its response",
        None,
        DURATION_BUCKETS,
    )
    return histogram.observe  # type: ignore[attr-defined]
