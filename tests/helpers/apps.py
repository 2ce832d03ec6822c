"""Apps that tests in more than one file run, as source text to write to a file."""

from __future__ import annotations

import textwrap
from pathlib import Path


def loop_app(task: float = 0.05) -> str:
    """Workers that just keep going: each task is a sleep of `task` seconds."""
    return f"""
import time
def worker_start(worker):
    time.sleep({task})
"""


def slow_task_app(task: float = 1.5) -> str:
    """Tasks long enough to be caught in the middle: each prints `task start PID`, then,
    unless it is cut short, `task done PID` `task` seconds later."""
    return f"""
import os, time
def worker_start(worker):
    print(f"task start {{os.getpid()}}", flush=True)
    time.sleep({task})
    print(f"task done {{os.getpid()}}", flush=True)
"""


def slow_boot_app(flag: Path | str, seconds: float) -> str:
    """Workers that take `seconds` to boot (in after_fork) while the file `flag`
    exists, and boot at once when it does not."""
    return f"""
import os, time
FLAG = {str(flag)!r}
def after_fork(worker):
    if os.path.exists(FLAG):
        time.sleep({seconds})
def worker_start(worker):
    time.sleep(0.05)
"""


# Not an app: a syntax error, for a start or a reload that must fail.
BROKEN_APP = "def worker_start(worker)\n    pass\n"


def write_app(tmp: Path, source: str, name: str = "app.py") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(source))
    return path
