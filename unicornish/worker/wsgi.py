"""The WSGI worker kind (--wsgi MODULE:NAME): a WSGI app served over HTTP/1.1.

The connection loop (http/server.py) hands this module one complete request
at a time; here it becomes a PEP 3333 environ, the app is called, and its
response is framed and written. One request is one task on the scoreboard:
counted, timed by --timeout, and counted towards --max-tasks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from io import BytesIO
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from unicornish.app import App, AppError, CompiledApp, load_callable, module_hooks
from unicornish.host import log
from unicornish.protocol import EXIT_OK, EXIT_TASK_FAILED
from unicornish.worker import httpmetrics
from unicornish.worker.process import Worker

# The master refuses to start without a listener (worker/kinds.py).
NEEDS_LISTENERS = True

# A response whose body is at most this big is gathered and written in one
# go, with a Content-Length we count; a bigger one is streamed.
BUFFER_BYTES = 256 * 1024

# Headers an app must not set (PEP 3333: hop-by-hop is the server's business).
_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    )
)
_NO_BODY = frozenset((204, 304))
_STATUS = re.compile(r"[1-5][0-9][0-9](?: [^\x00-\x08\x0a-\x1f\x7f]*)?\Z")
# A head as _head writes it: the status line, then fields, each a token, ": ",
# a value without CR, LF or NUL, CRLF.
_HEAD = re.compile(r"HTTP/1\.1 [^\r\n]*\r\n(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00\r\n]*\r\n)*")

REFUSALS = (
    "malformed method target version host content_length transfer_encoding trailer "
    "expect request_line field_size field_count head_size body_size timeout"
).split()


# -- loading --------------------------------------------------------------------


def load(spec: str, compiled: CompiledApp | None) -> App:
    """MODULE[:NAME]: import MODULE with the current directory first on sys.path
    (as gunicorn does), take NAME (default `application`), call it if it is
    written NAME()."""
    try:
        import httptools  # noqa: F401 - the parser: said now, not in each worker
    except ImportError:
        raise AppError("--wsgi needs httptools: pip install 'unicornish[wsgi]'") from None
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        if cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)
    module, target = load_callable(spec, "application", compiled)
    return App(spec=spec, module=module, entry=target, hooks=module_hooks(spec, module))


# -- serving --------------------------------------------------------------------


def serve(worker: Worker, app: App, ready: Callable[[], None]) -> int:
    from unicornish.http.parser import Limits
    from unicornish.http.server import HTTPServer

    settings = worker.settings
    limits = Limits(
        settings.limit_request_line,
        settings.limit_request_fields,
        settings.limit_request_field_size,
        settings.limit_request_body,
    )
    kind = WSGIHandler(worker, app.entry)
    server = HTTPServer(
        worker,
        kind.handle,
        limits,
        settings.keepalive,
        settings.header_timeout,
        settings.worker_connections,
        kind.stats,
    )
    kind.server = server
    ready()
    try:
        server.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        worker.log.info("worker[%d] the app called exit(%s)", worker.nr, exc.code)
        return code
    except BaseException:  # noqa: BLE001 - a defect of ours: logged, the master replaces us
        worker.log.exception("worker[%d] the HTTP loop failed; exiting", worker.nr)
        return EXIT_TASK_FAILED
    return EXIT_OK


class FileWrapper:
    """wsgi.file_wrapper: a file the server sends with os.sendfile when it can."""

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class ErrorStream:
    """wsgi.errors: what the app writes goes to the log, a line at a time."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self._log.error("%s", self._partial)
            self._partial = ""


class Response:
    """One response: start_response, write() and the body, framed on the way out."""

    __slots__ = (
        "server",
        "conn",
        "request",
        "status",
        "code",
        "headers",
        "head_sent",
        "length",
        "chunked",
        "parts",
        "size",
        "sent",
        "bodyless",
        "keep_alive",
        "streaming",
    )

    def __init__(self, server: Any, conn: Any, request: Any) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.status: str | None = None
        self.code = 0
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.length: int | None = None  # the app's Content-Length
        self.chunked = False
        self.parts: list[bytes] = []
        self.size = 0
        self.sent = 0
        self.bodyless = request.method == "HEAD"
        self.keep_alive = request.keep_alive
        # An iterable that is not a list or tuple (a generator: a stream, maybe
        # slow, maybe endless) and gives no length is sent as it comes, chunked.
        self.streaming = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called again without exc_info")
        if type(status) is not str or not _STATUS.match(status):
            raise AssertionError(f"bad status {status!r}")
        code = int(status[:3])
        length = None
        # The names and values are checked once the head is written (_head), in
        # one pass over its text; here only the length the body is held to.
        for name, value in headers:
            if len(name) == 14 and name.lower() == "content-length":
                try:
                    length = int(value.strip())
                except (TypeError, ValueError, AttributeError):
                    raise AssertionError(f"bad Content-Length {value!r}") from None
                if length < 0:
                    raise AssertionError(f"bad Content-Length {value!r}")
        self.status = status
        self.code = code
        self.headers = headers
        self.length = length
        self.parts = []
        self.size = 0
        if code < 200 or code in _NO_BODY:
            self.bodyless = True
        return self.write

    def write(self, data: bytes) -> None:
        """The body, a piece at a time (also the legacy write() callable)."""
        if self.status is None:
            raise AssertionError("the body came before start_response()")
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise AssertionError(f"the body must be bytes, got {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self.length is not None:
            left = self.length - self.size - self.sent
            if len(data) > left:
                data = data[:left]  # never more than the app's Content-Length
                if not data:
                    return
        if not self.head_sent:
            self.parts.append(data)
            self.size += len(data)
            if self.size > BUFFER_BYTES or (self.streaming and self.length is None):
                self._start_stream()
            return
        self._stream(data)

    def _head(self, length: int | None) -> bytes:
        """The status line and fields, with our framing, Date, Server, Connection."""
        if self.server.stopping or self.server.worker.stopping:
            self.keep_alive = False  # a stop came while the app ran: this is the last
        status = self.status or "500 Internal Server Error"
        # "200" alone is a valid WSGI status; the status line needs the space anyway.
        lines = ["HTTP/1.1 ", status if len(status) > 3 else status + " ", "\r\n"]
        fields = 0
        has_date = has_server = False
        for name, value in self.headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                if lower == "connection" and "close" in value.lower():
                    self.keep_alive = False
                continue
            if lower == "date":
                has_date = True
            elif lower == "server":
                has_server = True
            elif lower == "content-length" and self.code != 304:
                continue  # ours below, the same number (a 304's is the app's own)
            lines += (name, ": ", value, "\r\n")
            fields += 1
        if length is not None and not (self.code < 200 or self.code in _NO_BODY):
            lines.append(f"Content-Length: {length}\r\n")
        elif self.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self.request.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        joined = "".join(lines)
        # One pass checks every field: a token, ": ", no CR, LF or NUL in the
        # value. A value holding a whole "\r\n" + field would still match, so
        # the line count must be ours too (else: a response split).
        ours = len(lines) - 3 - 4 * fields
        if not _HEAD.fullmatch(joined) or joined.count("\n") != 1 + fields + ours:
            raise AssertionError(f"bad response header in {self.headers!r}"[:300])
        text = joined.encode("latin-1")
        if not has_date:
            text += b"Date: " + self.server.date() + b"\r\n"
        if not has_server:
            text += b"Server: unicornish\r\n"
        return text + b"\r\n"

    def finish(self) -> None:
        """The app is done: write what was gathered, or end the stream."""
        if self.status is None:
            raise AssertionError("the app returned without calling start_response()")
        server = self.server
        conn = self.conn
        if not self.head_sent:
            body = b"".join(self.parts) if len(self.parts) != 1 else self.parts[0]
            length = self.length
            if length is None and (body or self.request.method != "HEAD"):
                length = len(body)  # (a HEAD the app answered without a body: unknown)
            elif length is not None and length > len(body) and not self.bodyless:
                self.keep_alive = False  # the app promised more than it gave
            head = self._head(length)
            self.head_sent = True
            self.parts = []
            if self.bodyless:
                server.send(conn, head)
            else:
                server.send(conn, head + body)
                self.sent = len(body)
            return
        if self.chunked:
            server.stream(conn, b"0\r\n\r\n")
        elif self.length is not None and self.sent < self.length:
            self.keep_alive = False

    def _start_stream(self) -> None:
        """The body outgrew the buffer: send the head and stream from now on."""
        if self.length is None and not self.bodyless:
            if self.request.version == "1.1":
                self.chunked = True
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the close
        head = self._head(self.length)
        self.head_sent = True
        parts, self.parts = self.parts, []
        self.size = 0
        self.server.stream(self.conn, head)
        for part in parts:
            self._stream(part)

    def _stream(self, data: bytes) -> None:
        if self.bodyless:
            return
        self.sent += len(data)
        if self.chunked:
            self.server.stream(self.conn, b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.server.stream(self.conn, data)

    def send_file(self, wrapper: FileWrapper) -> bool:
        """A wsgi.file_wrapper of a regular file: os.sendfile. False when the file
        has no descriptor (then it is iterated like any body)."""
        try:
            fd = wrapper.filelike.fileno()
            stat = os.fstat(fd)
            offset = wrapper.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return False
        if not (stat.st_mode & 0o170000 == 0o100000):
            return False
        if self.status is None:
            raise AssertionError("the app returned without calling start_response()")
        count = max(0, stat.st_size - offset)
        if self.length is not None:
            count = min(count, self.length - self.size - self.sent)
        if self.size:  # write() was used before the file: keep the order
            self._start_stream()
        if not self.head_sent:
            if self.length is None:
                self.length = count
            head = self._head(self.length)
            self.head_sent = True
            self.server.stream(self.conn, head)
        if not self.bodyless and count:
            if self.chunked:
                self.server.stream(self.conn, b"%x\r\n" % count)
            sent = self.server.sendfile(self.conn, fd, offset, count)
            self.sent += sent
            if self.chunked:
                self.server.stream(self.conn, b"\r\n")
            if sent < count:
                self.keep_alive = False
        return True


class WSGIHandler:
    """Turns a request into an environ, calls the app, writes its response."""

    def __init__(self, worker: Worker, app: Callable[..., Any]) -> None:
        from unicornish.http.server import Stats
        from unicornish.metrics.appmetrics import COUNTER, GAUGE, builtin_metric

        def own(*args: Any) -> Any:
            return builtin_metric(*args)

        self.worker = worker
        self.app = app
        self.server: Any = None
        settings = worker.settings
        self.errors = ErrorStream(worker.log)
        self.script_name = os.environ.get("SCRIPT_NAME", "").rstrip("/")
        # Checked and spelt one way by the option's converter (config.address_list).
        self.trusted = _trust(tuple(settings.forwarded_allow_ips.split(",")))
        self.access_log = settings.access_log
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.errors": self.errors,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": self.script_name,
        }
        self.count_request = httpmetrics.request_counter()
        self.duration = httpmetrics.request_duration()
        refused = own(
            COUNTER,
            "unicornish_http_requests_refused",
            "Requests answered by the server without the app (bad framing, limits, timeouts), "
            "by cause",
            {"cause": REFUSALS},
        )
        refusals = {cause: refused.labels(cause=cause).inc for cause in REFUSALS}
        stats = Stats()
        stats.bytes_in = own(
            COUNTER, "unicornish_http_received_bytes", "Bytes read from HTTP clients"
        ).inc
        stats.bytes_out = own(
            COUNTER, "unicornish_http_sent_bytes", "Bytes written to HTTP clients"
        ).inc
        open_connections = own(GAUGE, "unicornish_http_connections", "Open HTTP client connections")
        stats.connections = open_connections.inc
        stats.refused = lambda cause: refusals.get(cause, refusals["malformed"])()
        self.stats = stats

    def handle(self, conn: Any, request: Any) -> None:
        from unicornish.http.server import ClientGone

        worker = self.worker
        if worker.max_tasks and worker.tasks + 1 >= worker.max_tasks:
            request.keep_alive = False  # the last one: say so in this answer
        started = worker.task_started()
        response = Response(self.server, conn, request)
        result: Any = None
        try:
            environ = self.environ(conn, request)
            result = self.app(environ, response.start_response)
            if (
                type(result) is FileWrapper
                and response.status is not None
                and response.send_file(result)
            ):
                pass
            else:
                response.streaming = type(result) not in (list, tuple)
                for data in result:
                    response.write(data)
            response.finish()
        except ClientGone:
            response.keep_alive = False
            raise
        except Exception:  # noqa: BLE001 - the app's error: a 500, the worker lives on
            worker.log.exception(
                "worker[%d] error handling %s %s",
                worker.nr,
                request.method,
                request.target.decode("latin-1"),
            )
            response.keep_alive = False
            if response.head_sent:
                raise ClientGone from None  # half a response: only a close tells the client
            response.status = None
            response.headers = [("Content-Type", "text/plain")]
            response.start_response("500 Internal Server Error", response.headers)
            response.parts = [b"500 Internal Server Error\n"]
            response.size = 26
            response.finish()
        finally:
            if result is not None:
                close = getattr(result, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001
                        worker.log.exception("worker[%d] the response's close() raised", worker.nr)
            if request.body is not None:
                request.body.close()
            request.keep_alive = response.keep_alive
            took = time.monotonic() - (request.received or started)
            self.count_request(request.method, response.code)
            self.duration(took)
            if self.access_log != "off":
                self.log_access(conn, request, response, took)
            worker.board.beat[0] = 0.0
            if worker.task_done():
                self.server.stop()

    def _connection_environ(self, conn: Any) -> dict[str, Any]:
        """What every request on `conn` shares: the constant keys and the two
        ends of the connection (the forwarded headers may change the latter)."""
        environ = dict(self.base)
        if conn.unix:
            environ.update(
                SERVER_NAME="localhost", SERVER_PORT="80", REMOTE_ADDR="127.0.0.1", REMOTE_PORT="0"
            )
            trusted = True
        else:
            local, peer = conn.local, conn.peer
            environ.update(
                SERVER_NAME=str(local[0]),
                SERVER_PORT=str(local[1]),
                REMOTE_ADDR=str(peer[0]),
                REMOTE_PORT=str(peer[1]),
            )
            trusted = self.trusted(str(peer[0]))
        environ["wsgi.url_scheme"] = "http"
        conn.extra = (environ, trusted)
        return environ

    def environ(self, conn: Any, request: Any) -> dict[str, Any]:
        extra = conn.extra
        if extra is None:
            self._connection_environ(conn)
            extra = conn.extra
        environ = extra[0].copy()
        path = request.path
        if b"%" in path:
            path_info = unquote_to_bytes(path).decode("latin-1")
        else:
            path_info = path.decode("latin-1")
        script_name = self.script_name
        if script_name and path_info.startswith(script_name):
            path_info = path_info[len(script_name) :]
        environ["REQUEST_METHOD"] = request.method
        environ["PATH_INFO"] = path_info
        environ["QUERY_STRING"] = request.query.decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = request.target.decode("latin-1")
        environ["SERVER_PROTOCOL"] = _PROTOCOLS[request.version]
        body = request.body
        environ["wsgi.input"] = body if body is not None else BytesIO()
        host = request.host
        forwarded_for = forwarded_proto = None
        keys = _KEYS
        for name, value in request.headers:
            key = keys.get(name)
            if key is None:
                key = _key(name)
                if key is None:
                    continue  # X_Forwarded_For must not pass for X-Forwarded-For
            text = value.decode("latin-1")
            if key in environ:
                if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                    environ[key] = text
                else:
                    environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
            else:
                environ[key] = text
            if key == "HTTP_HOST":
                if host is None:
                    host = value
            elif key == "HTTP_X_FORWARDED_FOR":
                forwarded_for = text if forwarded_for is None else forwarded_for + "," + text
            elif key == "HTTP_X_FORWARDED_PROTO":
                forwarded_proto = text
        if body is not None and "CONTENT_LENGTH" not in environ:
            environ["CONTENT_LENGTH"] = str(request.body_size)  # a chunked body, read whole
        scheme = "http"
        if extra[1] and (forwarded_proto is not None or forwarded_for is not None):
            if forwarded_proto is not None:
                proto = forwarded_proto.split(",")[0].strip().lower()
                if proto in ("http", "https"):
                    environ["wsgi.url_scheme"] = scheme = proto
            if forwarded_for is not None:
                client = _client_address(forwarded_for, self.trusted)
                if client:
                    environ["REMOTE_ADDR"] = client
                    environ["REMOTE_PORT"] = "0"
        if host:
            server = _HOSTS.get((host, scheme))
            if server is None:
                server = _split_host(host.decode("latin-1"), scheme)
                if len(_HOSTS) < 256:
                    _HOSTS[(host, scheme)] = server
            environ["SERVER_NAME"], environ["SERVER_PORT"] = server
        return environ

    def log_access(self, conn: Any, request: Any, response: Response, took: float) -> None:
        """The line --asgi writes too: `worker[n] CLIENT "METHOD TARGET HTTP/V" STATUS
        DURATIONms`, with the `http_request` event for --log-format json."""
        peer = conn.peer
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and peer else "unix"
        target = request.target.decode("latin-1")
        worker = self.worker
        worker.log.info(
            'worker[%d] %s "%s %s HTTP/%s" %d %.1fms',
            worker.nr,
            client,
            request.method,
            target,
            request.version,
            response.code,
            took * 1000,
            extra=log.event(
                "http_request",
                nr=worker.nr,
                client=client,
                method=request.method,
                path=target,
                http_version=request.version,
                status=response.code,
                duration=round(took, 6),
                bytes=response.sent,
            ),
        )


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
# Field name -> environ key, learnt as names come (bounded: names come from clients).
_KEYS: dict[bytes, str] = {}
_HOSTS: dict[tuple[bytes, str], tuple[str, str]] = {}


def _key(name: bytes) -> str | None:
    """The environ key of a field name; None for a name with `_`, which could pass
    for one with `-` (X_Forwarded_For for X-Forwarded-For)."""
    if b"_" in name:
        return None
    key = name.decode("latin-1").upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "HTTP_" + key
    if len(_KEYS) < 512:
        _KEYS[name] = key
    return key


def _split_host(host: str, scheme: str) -> tuple[str, str]:
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if not port:
        port = "443" if scheme == "https" else "80"
    return name.lower(), port


def _client_address(forwarded_for: str, trusted: Callable[[str], bool]) -> str | None:
    """The rightmost address that is not one of our trusted proxies."""
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else None


def _trust(allowed: tuple[str, ...]) -> Callable[[str], bool]:
    if "*" in allowed:
        return lambda address: True
    if all(item == "::1" or ("/" not in item and ":" not in item) for item in allowed):
        # Plain addresses (the default): compared as text, without ipaddress
        # (an IPv6 spelling other than ::1 goes the ipaddress way below).
        plain = frozenset(item.lower() for item in allowed)

        def trusted_address(address: str) -> bool:
            address = address.strip("[]").lower()
            if address.startswith("::ffff:") and "." in address:
                address = address[7:]  # an IPv4 client of an IPv6 listener
            return address in plain

        return trusted_address
    import ipaddress

    networks = [ipaddress.ip_network(item, strict=False) for item in allowed]

    @lru_cache(maxsize=1024)
    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        return any(ip in network for network in networks)

    return trusted
