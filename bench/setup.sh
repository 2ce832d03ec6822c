#!/usr/bin/env bash
# Prepare the benchmark's own environment; safe to run again and again.
#   bench/.venv  : python3 -m venv with gunicorn, matplotlib, psutil, py-spy,
#                  prometheus_client (scenario 12: --metrics), and for scenario 14
#                  (--asgi) uvicorn with httptools, uvloop, websockets, the
#                  uvicorn-worker for gunicorn and starlette (the app); for
#                  bench/http_wsgi.py (--wsgi) granian and flask
#                  and unicornish itself (editable) when pyproject.toml exists
#   strace, wrk  : from Debian (apt-get) when missing; the bench says
#                  "strace not installed" / skips the HTTP bench if this fails.
# Ruby's Unicorn is installed separately by bench/peers.sh (make bench-peers).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "bench/setup.sh: creating $venv" >&2
    "$py" -m venv "$venv"
fi

# Third-party tools, reinstalled only when this list changes.
reqs="gunicorn matplotlib psutil py-spy prometheus_client uvicorn httptools uvloop websockets uvicorn-worker starlette granian flask"
stamp="$venv/.bench-reqs"
if [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
    echo "bench/setup.sh: installing $reqs" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $reqs
    echo "$reqs" > "$stamp"
fi

# The project itself, editable, so the bench always runs the working tree.
if [ -f "$root/pyproject.toml" ]; then
    pstamp="$venv/.bench-project"
    sum="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$pstamp" 2>/dev/null)" != "$sum" ] || ! "$venv/bin/python" -c 'import unicornish' 2>/dev/null; then
        echo "bench/setup.sh: pip install -e $root" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[wsgi]"
        echo "$sum" > "$pstamp"
    fi
fi

if ! command -v strace >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench/setup.sh: installing strace" >&2
        { apt-get install -y -q strace || { apt-get update -q && apt-get install -y -q strace; }; } >/dev/null 2>&1 \
            || echo "bench/setup.sh: could not install strace; the idle-master scenario will say so" >&2
    else
        echo "bench/setup.sh: strace missing (needs root + apt-get); the idle-master scenario will say so" >&2
    fi
fi

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench/setup.sh: installing wrk" >&2
        { apt-get install -y -q wrk || { apt-get update -q && apt-get install -y -q wrk; }; } >/dev/null 2>&1 \
            || echo "bench/setup.sh: could not install wrk; the HTTP bench will say so" >&2
    else
        echo "bench/setup.sh: wrk missing (needs root + apt-get); the HTTP bench will say so" >&2
    fi
fi
