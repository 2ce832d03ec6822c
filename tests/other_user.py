"""A throwaway system user (root only), and directories that user can reach.

pytest's tmp_path lives under /tmp/pytest-of-root (mode 0700): another user
cannot even look inside, so tests that involve one use `open_dir()`.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# The venv's Python lives under /root (0700) here: another user runs the system one.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@dataclass
class User:
    name: str
    uid: int
    gid: int
    extra_group: str
    extra_gid: int


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creating a second user and switching to it")
    for tool in ("useradd", "userdel", "groupadd", "groupdel"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to create a test user")


@contextmanager
def temp_user() -> Iterator[User]:
    """A user with its own primary group and one supplementary group; removed after."""
    need_root()
    suffix = secrets.token_hex(3)
    name, extra = f"unitest{suffix}", f"unitestx{suffix}"
    subprocess.run(["groupadd", extra], check=True, capture_output=True)
    try:
        subprocess.run(
            ["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", "-G", extra, name],
            check=True,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(name)
            yield User(name, entry.pw_uid, entry.pw_gid, extra, grp.getgrnam(extra).gr_gid)
        finally:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it
    finally:
        subprocess.run(["groupdel", extra], capture_output=True)


@contextmanager
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that every user may enter and read (mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix="unicornish-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_as(user: User, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
