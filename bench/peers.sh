#!/usr/bin/env bash
# Install the peers that do not come from PyPI: Ruby's Unicorn, from Debian.
# (gunicorn comes from PyPI into bench/.venv; see bench/setup.sh.)
set -euo pipefail
if command -v unicorn >/dev/null 2>&1; then
    echo "bench/peers.sh: unicorn already installed: $(command -v unicorn)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "bench/peers.sh: needs root for apt-get (try: sudo make bench-peers)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q unicorn || { apt-get update -q && apt-get install -y -q unicorn; }
command -v unicorn
