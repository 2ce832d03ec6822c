"""A Flask app for the HTTP worker's tests: forms, uploads, streaming, send_file."""

from __future__ import annotations

import hashlib
import os
import time

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

app = Flask(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "1"


@app.get("/")
def index() -> str:
    return "hello from flask\n"


@app.get("/pid")
def pid() -> Response:
    return jsonify(pid=os.getpid(), version=VERSION)


@app.post("/form")
def form() -> Response:
    return jsonify(dict(request.form))


@app.post("/upload")
def upload() -> Response:
    f = request.files["file"]
    data = f.read()
    return jsonify(
        name=f.filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        note=request.form.get("note"),
    )


@app.post("/raw")
def raw() -> Response:
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get("/stream")
def stream() -> Response:
    n = int(request.args.get("n", "5"))

    @stream_with_context
    def chunks():
        for i in range(n):
            yield f"chunk {i} {request.path}\n"

    return Response(chunks(), mimetype="text/plain")


@app.get("/file")
def file() -> Response:
    return send_file(os.path.join(HERE, "payload.bin"), mimetype="application/octet-stream")


@app.get("/big")
def big() -> bytes:
    return b"x" * int(request.args.get("n", "1000000"))


@app.get("/slow")
def slow() -> str:
    time.sleep(float(request.args.get("s", "1")))
    return "slept\n"


@app.get("/error")
def error() -> str:
    raise RuntimeError("boom in the app")


@app.route("/environ", methods=["GET", "POST"])
def environ() -> Response:
    keys = (
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "wsgi.url_scheme",
        "CONTENT_LENGTH",
    )
    return jsonify({k: request.environ.get(k) for k in keys})
