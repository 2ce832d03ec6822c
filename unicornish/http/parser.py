"""Request parsing: llhttp (through httptools) frames the bytes, and the checks
here refuse what llhttp lets through but a server must not pass on.

Why llhttp: it is the parser of Node.js and uvicorn, generated from a state
machine, fuzzed and maintained by people whose job is HTTP framing; in its
strict mode (the default, no leniency turned on) it already refuses bare LF
and CR, obsolete line folding, control characters in field values, a
Content-Length with a Transfer-Encoding, duplicate, list-form and signed
Content-Lengths, and bad, signed or overflowing chunk sizes. What it leaves to
the server, and this module checks:

- the version: HTTP/1.0 and HTTP/1.1 only (505);
- the request target: origin-form, absolute-form (http/https), `*` for
  OPTIONS; no fragment; CONNECT is refused (501);
- methods llhttp does not know are 501, garbage in their place 400;
- exactly one Host on HTTP/1.1 (400);
- Transfer-Encoding: exactly `chunked` (others 501), never on HTTP/1.0 (400);
- Content-Length: digits only, within --limit-request-body (413);
- trailers that would change the framing or routing (400);
- limits: the request line (414), the fields' count and size (431), the
  whole head (431), the body (413);
- Expect: 100-continue is answered, any other expectation is 417.

A request is handed on only when it is complete: the head checked and the
body read, in memory or, past a threshold, in a temporary file.
"""

from __future__ import annotations

import io
import re
from collections import deque
from typing import IO, Any

import httptools

# Bodies up to this many bytes stay in memory; larger ones go to a temporary file.
SPOOL_BYTES = 1 << 20

# Fields whose place is the head only: in a trailer they could change framing,
# routing or authentication after a proxy made its decisions.
FORBIDDEN_TRAILERS = frozenset(
    b"""content-length transfer-encoding host content-type content-encoding
    content-range trailer te connection keep-alive upgrade expect authorization
    proxy-authorization cookie set-cookie range max-forwards cache-control
    pragma www-authenticate proxy-authenticate age expires date location
    retry-after vary warning""".split()
)

# Methods llhttp parses that a WSGI server answers (the others it knows are
# RTSP, WebDAV extensions and the like: passed on too, as gunicorn does).
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# uri-host [":" port] (RFC 9110 7.2): an IP literal or a reg-name; empty is allowed.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")
# The lengths of the field names on_header looks at (Host, Expect, Content-Length,
# Transfer-Encoding): any other name is stored without lowering it.
_FRAMING_LENGTHS = frozenset((4, 6, 14, 17))
_TARGET_CHARS = frozenset(range(0x21, 0x7F)) - {ord("#")}


class HTTPError(Exception):
    """A request refused: the status to answer and the cause (a metric label)."""

    def __init__(self, status: int, cause: str, detail: str = "") -> None:
        super().__init__(detail or cause)
        self.status = status
        self.cause = cause


class Limits:
    """The request limits, from the command line (--limit-request-*)."""

    __slots__ = ("line", "fields", "field_size", "body", "head", "field_bound", "fields_bound")

    def __init__(self, line: int, fields: int, field_size: int, body: int) -> None:
        self.line = line  # 0: unlimited (llhttp still bounds nothing: see head)
        self.fields = fields
        self.field_size = field_size
        self.body = body
        # The whole head: what the line and the fields may add up to. Bounds what
        # is buffered before a head is complete even when a limit is 0 (off).
        self.head = (line or 8190) + (fields or 100) * ((field_size or 8190) + 4) + 4
        # The same limits with 0 (none of its own) as a bound no field reaches.
        self.field_bound = field_size or self.head
        self.fields_bound = fields or self.head


class Request:
    """One complete request, as the worker kind sees it."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "body",
        "body_size",
        "keep_alive",
        "host",
        "upgrade",
        "error",
        "received",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.path = b""
        self.query = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: IO[bytes] | None = None
        self.body_size = 0
        self.keep_alive = True
        self.host: bytes | None = None  # from an absolute-form target
        self.upgrade = False
        self.error: HTTPError | None = None  # a refused request: answer this, then close
        self.received = 0.0  # when its head was complete (monotonic)


def refused(error: HTTPError) -> Request:
    request = Request()
    request.error = error
    request.keep_alive = False
    return request


class RequestReader:
    """Feeds a connection's bytes to llhttp and collects complete requests.

    `feed(data)` appends every request it completes to `self.done` and returns
    False once the connection must not be read any more (an error, queued as
    a refused request, or an upgrade: nothing after it is HTTP)."""

    __slots__ = (
        "_parser",
        "_limits",
        "done",
        "_request",
        "_url",
        "_headers",
        "_in_head",
        "_head_bytes",
        "_body",
        "_body_size",
        "_trailers",
        "_hosts",
        "_chunked",
        "_length",
        "_expect",
        "continue_wanted",
        "started",
        "clock",
    )

    def __init__(self, limits: Limits, clock: Any) -> None:
        self._limits = limits
        self.clock = clock
        self.done: deque[Request] = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._body: Any = None
        self._body_size = 0
        self._trailers = False
        self._hosts = 0
        self._chunked = False
        self._length: int | None = None
        self._expect: bytes | None = None
        # Set when a head with Expect: 100-continue is accepted: the loop sends
        # the interim response, then clears it.
        self.continue_wanted = False
        # Monotonic time the current request's first byte came (0: between requests).
        self.started = 0.0

    @property
    def between_requests(self) -> bool:
        return self._request is None

    @property
    def in_head(self) -> bool:
        return self._in_head

    def feed(self, data: bytes) -> bool:
        if self._request is None:
            if not data.strip(b"\r\n"):
                # Empty lines before a request are ignored (RFC 9112 2.2), and
                # do not start its clock.
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    self._failed(exc, data)
                    return False
                return True
            self.started = self.clock()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops after the head of a request that asks to switch
            # protocols (an Upgrade, CONNECT): the request is complete (its
            # body, if any, was read); what follows is not HTTP. Answer it, close.
            if self._request is not None:  # a head that stopped early (CONNECT)
                self._fail(HTTPError(501, "method", "CONNECT is not supported"))
            if self.done:
                self.done[-1].upgrade = True
                self.done[-1].keep_alive = False
            return False
        except httptools.HttpParserError as exc:
            self._failed(exc, data)
            return False
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.head:
                if not self._headers and self._limits.line:
                    self._fail(HTTPError(414, "request_line", "request line too long"))
                else:
                    self._fail(HTTPError(431, "head_size", "request head too large"))
                return False
        return True

    def _failed(self, exc: Exception, data: bytes) -> None:
        context = exc.__context__
        if isinstance(context, HTTPError):
            self._fail(context)
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._fail(_method_error(data))
        elif str(exc) == "Invalid HTTP version":
            # HTTP/d.d that llhttp does not know (HTTP/1.2, HTTP/3.0): 505; any
            # other malformed version is a 400 below.
            self._fail(HTTPError(505, "version", str(exc)))
        else:
            self._fail(HTTPError(400, "malformed", str(exc)))

    def _fail(self, error: HTTPError) -> None:
        self._discard_body()
        self._request = None
        self._in_head = False
        self.done.append(refused(error))

    def _discard_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._discard_body()
        for request in self.done:
            if request.body is not None:
                request.body.close()
        self.done.clear()

    # -- llhttp's callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request()
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_bytes = 0
        self._body = None
        self._body_size = 0
        self._trailers = False
        self._hosts = 0
        self._chunked = False
        self._length = None
        self._expect = None
        if not self.started:
            self.started = self.clock()

    def on_url(self, url: bytes) -> None:
        url = self._url + url
        self._url = url
        limit = self._limits.line
        if limit and len(url) > limit:
            raise HTTPError(414, "request_line", "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers:
            if name.lower() in FORBIDDEN_TRAILERS:
                raise HTTPError(400, "trailer", f"forbidden trailer {name.decode('latin-1')}")
            return  # other trailers are read and dropped: WSGI has no place for them
        limits = self._limits
        if len(name) + len(value) + 2 > limits.field_bound:
            raise HTTPError(431, "field_size", "request header field too large")
        headers = self._headers
        if len(headers) >= limits.fields_bound:
            raise HTTPError(431, "field_count", "too many request header fields")
        headers.append((name, value))
        if len(name) in _FRAMING_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                self._hosts += 1
                if not _HOST.match(value):
                    raise HTTPError(400, "host", "bad Host")
            elif lower == b"content-length":
                value = value.strip(b" \t")
                if not value.isdigit() or self._length is not None:
                    raise HTTPError(400, "content_length", "bad Content-Length")
                self._length = int(value)
            elif lower == b"expect":
                self._expect = value.strip(b" \t")
            elif lower == b"transfer-encoding":
                if self._chunked or value.strip(b" \t").lower() != b"chunked":
                    raise HTTPError(501, "transfer_encoding", "only chunked is supported")
                self._chunked = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = self._request
        assert request is not None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HTTPError(505, "version", f"HTTP/{version} is not supported")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise HTTPError(501, "method", "CONNECT is not supported")
        url = self._url
        line = self._limits.line
        if line and len(method) + len(url) + 10 > line:  # METHOD SP TARGET SP HTTP/x.y
            raise HTTPError(414, "request_line", "request line too long")
        _check_target(url, method, request)
        if version == "1.1" and self._hosts != 1:
            raise HTTPError(400, "host", "HTTP/1.1 needs exactly one Host")
        if self._chunked and version == "1.0":
            raise HTTPError(400, "transfer_encoding", "Transfer-Encoding on HTTP/1.0")
        length = self._length
        limit = self._limits.body
        if limit and length is not None and length > limit:
            raise HTTPError(413, "body_size", "request body too large")
        request.method = method
        request.target = url
        request.version = version
        request.headers = self._headers
        request.keep_alive = parser.should_keep_alive()
        if length or self._chunked:
            expect = self._expect
            if expect is not None:
                if expect.lower() != b"100-continue":
                    raise HTTPError(417, "expect", "unsupported expectation")
                if version == "1.1":
                    self.continue_wanted = True
            if length is not None and length <= SPOOL_BYTES:
                self._body = io.BytesIO()
            else:
                import tempfile  # here: most workers never need it (nor random, shutil)

                self._body = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        self._in_head = False
        self._trailers = True
        request.received = self.clock()

    def on_body(self, body: bytes) -> None:
        size = self._body_size + len(body)
        limit = self._limits.body
        if limit and size > limit:
            raise HTTPError(413, "body_size", "request body too large")
        self._body_size = size
        self._body.write(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        body = self._body
        if body is not None:
            body.seek(0)
            request.body = body
            request.body_size = self._body_size
            self._body = None
        self._request = None
        self.started = 0.0
        self.done.append(request)


def _method_error(data: bytes) -> HTTPError:
    """A method llhttp does not know: 501 when it is a token (a method we do not
    implement), 400 when it is not even that."""
    word = data.lstrip(b"\r\n").partition(b" ")[0]
    if word and _TOKEN.issuperset(word) and word.upper() == word:
        return HTTPError(501, "method", "unknown method")
    return HTTPError(400, "method", "bad method")


def _check_target(url: bytes, method: str, request: Request) -> None:
    if not url:
        raise HTTPError(400, "target", "empty request target")
    if not _TARGET_CHARS.issuperset(url):
        raise HTTPError(400, "target", "bad character in request target")
    first = url[:1]
    if first == b"/":
        path, _, query = url.partition(b"?")
    elif url == b"*":
        if method != "OPTIONS":
            raise HTTPError(400, "target", "* is for OPTIONS only")
        path, query = b"*", b""
    else:
        lower = url[:8].lower()
        if lower.startswith(b"http://"):
            rest = url[7:]
        elif lower.startswith(b"https://"):
            rest = url[8:]
        else:
            raise HTTPError(400, "target", "bad request target")
        authority, slash, tail = rest.partition(b"/")
        authority = authority.partition(b"?")[0]
        if not authority or b"@" in authority:
            raise HTTPError(400, "target", "bad authority in request target")
        request.host = authority
        path, _, query = (slash + tail).partition(b"?")
        if not path:
            path = b"/"
    request.path = path
    request.query = query
