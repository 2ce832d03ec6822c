"""The request parser alone, against the corpus of tests/http_corpus.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from http_corpus import INVALID, VALID  # noqa: E402

from unicornish.config import Settings  # noqa: E402
from unicornish.http.parser import Limits, RequestReader  # noqa: E402

SETTINGS = Settings()
LIMITS = Limits(
    SETTINGS.limit_request_line,
    SETTINGS.limit_request_fields,
    SETTINGS.limit_request_field_size,
    SETTINGS.limit_request_body,
)


def read(data: bytes, step: int = 0) -> RequestReader:
    reader = RequestReader(LIMITS, time.monotonic)
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        if not reader.feed(piece):
            break
    return reader


@pytest.mark.parametrize("step", [0, 1, 7])
@pytest.mark.parametrize(("name", "data"), VALID, ids=[v[0] for v in VALID])
def test_valid_requests_are_passed_on(name: str, data: bytes, step: int) -> None:
    reader = read(data, step)
    assert len(reader.done) == 1, name
    request = reader.done[0]
    assert request.error is None, f"{name}: {request.error}"


@pytest.mark.parametrize("step", [0, 1])
@pytest.mark.parametrize(("name", "data", "status"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_requests_are_refused(name: str, data: bytes, status: int, step: int) -> None:
    reader = read(data, step)
    errors = [r.error for r in reader.done if r.error is not None]
    passed = [r for r in reader.done if r.error is None]
    assert not passed, f"{name}: passed on to the app"
    assert errors, f"{name}: neither refused nor passed"
    assert errors[0].status == status, f"{name}: {errors[0].status} {errors[0]}"


def test_bodies_are_read_whole() -> None:
    reader = read(VALID[7][1], 3)
    request = reader.done[0]
    assert request.body is not None and request.body.read() == b"abc0123456789"
    assert request.body_size == 13


def test_pipelined_requests_come_in_order() -> None:
    data = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
        + b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        + b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    reader = read(data)
    targets = [r.target for r in reader.done]
    assert targets == [b"/0", b"/1", b"/2", b"/3", b"/4", b"/p", b"/last"]


def test_a_smuggled_request_in_a_body_stays_in_the_body() -> None:
    inner = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
    reader = read(data)
    assert [r.target for r in reader.done] == [b"/"]
    assert reader.done[0].body.read() == inner


def test_a_large_body_is_spooled_to_a_file() -> None:
    size = 3 << 20
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    reader = read(data, 65536)
    body = reader.done[0].body
    assert body is not None and getattr(body, "_rolled", True)
    assert len(body.read()) == size


def test_the_head_is_bounded_even_without_an_end_of_line() -> None:
    reader = RequestReader(LIMITS, time.monotonic)
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
    fed = 0
    while reader.feed(b"a" * 65536):
        fed += 65536
        assert fed < 2 * LIMITS.head
    assert reader.done[0].error is not None and reader.done[0].error.status == 431


def test_upgrade_requests_are_answered_then_closed() -> None:
    data = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    )
    reader = RequestReader(LIMITS, time.monotonic)
    assert not reader.feed(data)
    assert reader.done[0].error is None and not reader.done[0].keep_alive
