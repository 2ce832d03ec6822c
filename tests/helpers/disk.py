"""A real filesystem to fill up: the fixture `small_fs` (conftest.py) mounts
one, `fill` leaves no byte free on it."""

from __future__ import annotations

import os
from pathlib import Path


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler
