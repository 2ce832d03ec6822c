"""A bare WSGI app for the corners of PEP 3333 the frameworks hide."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class Closing:
    """An iterable whose close() leaves a mark: the server must always call it."""

    def __init__(self, parts: list[bytes], fail_at: int = -1) -> None:
        self.parts = parts
        self.fail_at = fail_at

    def __iter__(self):
        for i, part in enumerate(self.parts):
            if i == self.fail_at:
                raise RuntimeError("late failure")
            yield part

    def close(self) -> None:
        with open(os.path.join(HERE, "closed.log"), "a") as f:
            f.write("closed\n")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"then returned"]
    if path == "/exc_info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        return [b"try later"]
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"a", b"b"])
    if path == "/late_error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"x" * 300000, b"never"], fail_at=1)
    if path == "/not_modified":
        start_response("304 Not Modified", [("ETag", '"1"')])
        return []
    if path == "/bad_header":
        start_response("200 OK", [("X-Split", "a\r\nSet-Cookie: evil=1")])
        return [b"no"]
    if path == "/errors":
        environ["wsgi.errors"].write("a line for the log\n")
        start_response("200 OK", [])
        return [b""]
    start_response("404 Not Found", [])
    return [b"?"]
