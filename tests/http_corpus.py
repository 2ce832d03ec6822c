"""Valid and malicious HTTP/1.1 requests, with the answer each must get.

Used by tests/unit/test_http_parser.py (the parser alone) and by
tests/test_wsgi.py (a real server over a socket). Each entry: a name, the
bytes sent, and the status expected for the first answer: 200 when the app
must see the request, or the refusal's status (the connection then closes).
Request-smuggling cases are the framing ones: a server that passes any of
them to the app could be made to read a second request out of a body.
"""

from __future__ import annotations

H = b"Host: example.com\r\n"

VALID: list[tuple[str, bytes]] = [
    ("simple GET", b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
    ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n"),
    ("query and percent-encoding", b"GET /a%20b/c?x=1&y=%41 HTTP/1.1\r\n" + H + b"\r\n"),
    ("absolute-form target", b"GET http://example.com/p?q HTTP/1.1\r\n" + H + b"\r\n"),
    ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n"),
    ("Content-Length body", b"POST /f HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"),
    ("Content-Length with OWS", b"POST / HTTP/1.1\r\n" + H + b"Content-Length:  3 \r\n\r\nabc"),
    (
        "chunked body",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ),
    (
        "chunked, uppercase and extension",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n"
        b"3;name=value\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "chunked with an allowed trailer",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n",
    ),
    ("empty lines before the request", b"\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n"),
    ("tab in a field value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\tb\r\n\r\n"),
    ("obs-text in a field value", b"GET / HTTP/1.1\r\n" + H + b"X-A: caf\xe9\r\n\r\n"),
    ("empty field value", b"GET / HTTP/1.1\r\n" + H + b"X-Empty:\r\n\r\n"),
    ("repeated field", b"GET / HTTP/1.1\r\n" + H + b"Accept: a\r\nAccept: b\r\n\r\n"),
    ("PATCH", b"PATCH /x HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"),
    ("DELETE", b"DELETE /x HTTP/1.1\r\n" + H + b"\r\n"),
    ("HEAD", b"HEAD / HTTP/1.1\r\n" + H + b"\r\n"),
    (
        "Expect 100-continue",
        b"POST / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    ),
    ("IPv6 Host", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
    ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    (
        "quoted chunk extension",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'3;a="b c"\r\nabc\r\n0\r\n\r\n',
    ),
    # RFC 9112 asks for at least 8000 bytes of request line: served.
    ("request line of 8000 bytes", b"GET /" + b"a" * 7980 + b" HTTP/1.1\r\n" + H + b"\r\n"),
]

CL = b"Content-Length: "
TE = b"Transfer-Encoding: "

INVALID: list[tuple[str, bytes, int]] = [
    # framing: where request smuggling comes from
    (
        "Content-Length and Transfer-Encoding",
        b"POST / HTTP/1.1\r\n" + H + CL + b"3\r\n" + TE + b"chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding and Content-Length",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n" + CL + b"3\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "duplicate Content-Length",
        b"POST / HTTP/1.1\r\n" + H + CL + b"3\r\n" + CL + b"3\r\n\r\nabc",
        400,
    ),
    (
        "differing Content-Lengths",
        b"POST / HTTP/1.1\r\n" + H + CL + b"3\r\n" + CL + b"4\r\n\r\nabcd",
        400,
    ),
    ("list-form Content-Length", b"POST / HTTP/1.1\r\n" + H + CL + b"3, 3\r\n\r\nabc", 400),
    ("signed Content-Length", b"POST / HTTP/1.1\r\n" + H + CL + b"+3\r\n\r\nabc", 400),
    ("negative Content-Length", b"POST / HTTP/1.1\r\n" + H + CL + b"-1\r\n\r\n", 400),
    ("hex Content-Length", b"POST / HTTP/1.1\r\n" + H + CL + b"0x3\r\n\r\nabc", 400),
    ("empty Content-Length", b"POST / HTTP/1.1\r\n" + H + CL + b"\r\n\r\n", 400),
    (
        "huge Content-Length",
        b"POST / HTTP/1.1\r\n" + H + CL + b"99999999999999999999999\r\n\r\n",
        400,
    ),
    ("Content-Length over the limit", b"POST / HTTP/1.1\r\n" + H + CL + b"104857601\r\n\r\n", 413),
    ("space before colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc", 400),
    ("Transfer-Encoding gzip", b"POST / HTTP/1.1\r\n" + H + TE + b"gzip\r\n\r\n", 501),
    (
        "Transfer-Encoding gzip, chunked",
        b"POST / HTTP/1.1\r\n" + H + TE + b"gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "Transfer-Encoding chunked, chunked",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding twice",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n" + TE + b"chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding with a vertical tab",
        b"POST / HTTP/1.1\r\n" + H + TE + b"\x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding on HTTP/1.0",
        b"POST / HTTP/1.0\r\n" + TE + b"chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "signed chunk size",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "bad chunk size",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size with a space",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk without CRLF after data",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
        400,
    ),
    (
        "chunk with bare LF",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "Content-Length in a trailer",
        b"POST / HTTP/1.1\r\n"
        + H
        + TE
        + b"chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "Transfer-Encoding in a trailer",
        b"POST / HTTP/1.1\r\n"
        + H
        + TE
        + b"chunked\r\n\r\n3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "Host in a trailer",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n0\r\nHost: evil\r\n\r\n",
        400,
    ),
    # line endings and folding
    ("bare LF line ends", b"GET / HTTP/1.1\n" + b"Host: a\n\n", 400),
    ("bare LF in the head", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("bare CR in the head", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    ("obsolete line folding", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", 400),
    ("folding with a tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", 400),
    ("field line starting with a space", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    # control characters
    ("NUL in a field value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("control character in a field value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("DEL in a field value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    ("bad character in a field name", b"GET / HTTP/1.1\r\n" + H + b"X(y): b\r\n\r\n", 400),
    ("empty field name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    # methods
    ("unknown method", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("lowercase method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("garbage method", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\n" + H + b"\r\n", 501),
    # versions
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("HTTP/2.0 in a request line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/0.9", b"GET /\r\n\r\n", 505),
    ("lowercase version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("no version", b"GET / \r\n" + H + b"\r\n", 400),
    # targets
    ("space in the target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("control character in the target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("byte above 0x7f in the target", b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("fragment in the target", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("* for GET", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form with userinfo", b"GET http://u@example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form of another scheme", b"GET ftp://example.com/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    # Host
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    # expectations
    (
        "unknown expectation",
        b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\nok",
        417,
    ),
    # limits
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("field too large", b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (
        "too many fields",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: a\r\n" % i for i in range(120)) + b"\r\n",
        431,
    ),
    ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    ("Host with a bad port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400),
    (
        "control character in a chunk extension",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3;a\x01b\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "bare LF after the last chunk",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3\r\nabc\r\n0\n\r\n",
        400,
    ),
    (
        "chunk longer than its size",
        b"POST / HTTP/1.1\r\n" + H + TE + b"chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
        400,
    ),
    ("Transfer-Encoding identity", b"POST / HTTP/1.1\r\n" + H + TE + b"identity\r\n\r\n", 501),
    ("space after the version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("tab in the request line", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
]
