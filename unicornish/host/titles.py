"""Process titles: `worker[n]` / `unicornish` in `ps -o comm=`, a fuller line in `ps -o args=`."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import setproctitle

from unicornish.host import log, sockets


def _set(full: str, short: str) -> None:
    # setproctitle() also sets comm to a 15-byte cut of the full title, so the
    # short name has to be set after it. It encodes strictly: a surrogate (an
    # undecodable byte of a file name) would raise, so it becomes U+FFFD.
    setproctitle.setproctitle(log.printable(full))
    setproctitle.setthreadtitle(short)


def set_master_title(app_spec: str, listeners: Sequence[socket.socket], old: bool = False) -> None:
    """The app as given (a path or a module: `ps ax | grep myproject` finds the
    master, which a base name like `app.py` would not) and the first listen
    address, so two masters of one app on one host can be told apart."""
    words = [app_spec]
    for sock in listeners[:1]:
        try:
            words.append(sockets.socket_address(sock))
        except OSError:
            pass  # closed under us: the app alone still names the master
    _set(f"unicornish master{' (old)' if old else ''} {' '.join(words)}", "unicornish")


def set_worker_title(nr: int, app_name: str) -> None:
    _set(f"unicornish worker[{nr}] {app_name}", f"worker[{nr}]")


def set_spare_title(app_name: str) -> None:
    # Not `worker[...]`: a spare is no worker until the master gives it a slot.
    _set(f"unicornish spare {app_name}", "spare")


def set_mold_title(app_name: str) -> None:
    _set(f"unicornish mold {app_name}", "mold")
