"""The fixtures: `start` (a master from bin/unicornish, every process of it
killed at the end of the test), `app_file`, `groups` (child cgroups), and the
--soak options.

The helpers live in tests/helpers/ (`from helpers import ...`); the names this
module exported before are re-exported here, so `from conftest import ...`
keeps working.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    BIN,
    EXAMPLES,
    PY,
    ROOT,
    Groups,
    Run,
    Seen,
    alive,
    gone,
    loop_app,
    run_cli,
    slow_task_app,
    wait_until,
    write_app,
)

__all__ = [
    "BIN",
    "EXAMPLES",
    "PY",
    "ROOT",
    "Run",
    "Seen",
    "alive",
    "gone",
    "loop_app",
    "run_cli",
    "slow_task_app",
    "wait_until",
    "write_app",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/chaos/conftest.py, which pytest reads only once it
    # collects tests/chaos: too late for a bare `pytest --soak` from the root.
    group = parser.getgroup("unicornish chaos")
    group.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="long chaos and leak runs; their figures go into docs/RELIABILITY.md",
    )
    group.addoption(
        "--soak-seconds",
        type=float,
        default=90.0,
        help="how long each chaos scenario runs under --soak (default 90)",
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def _start(
        *args: str,
        env: dict[str, str] | None = None,
        log_file: bool = True,
        cwd: Path | None = None,
        prefix: list[str] | None = None,
    ) -> Run:
        run = Run(tmp_path, list(args), env, log_file, cwd, prefix)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        run.cleanup()


@pytest.fixture
def app_file(tmp_path: Path) -> Callable[..., Path]:
    def _make(source: str, name: str = "app.py") -> Path:
        return write_app(tmp_path, source, name)

    return _make


@pytest.fixture
def groups(start: Callable[..., Run]) -> Iterator[Groups]:
    # Depends on `start`, so this teardown (kill, rmdir) runs before start's.
    made = Groups(start)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB filesystem (tmpfs), to fill up (helpers.fill)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        # Lazy: a master that is still being cleaned up may hold the log open.
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
