"""Helpers for the reliability suites (issue 7): looking at a live master from
outside through /proc, running it as a throwaway user, and writing the figures
the suites measure into docs/RELIABILITY.md.

Nothing here mocks anything: every number comes from a real process.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import ROOT, Run, children

DOCS = ROOT / "docs"
RESULTS = DOCS / "reliability"
RELIABILITY_MD = DOCS / "RELIABILITY.md"


# -- looking at a process from outside ----------------------------------------------


def zombies(pid: int) -> list[int]:
    return [c for c, _comm, state in children(pid) if state == "Z"]


def fd_targets(pid: int) -> list[str]:
    """What each open fd of pid points at, sorted (fd numbers dropped)."""
    targets = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        # pipe:[123] / socket:[456] inode numbers identify the object: keep them.
        targets.append(target)
    return sorted(targets)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def snapshot(pid: int) -> dict[str, Any]:
    fds = fd_targets(pid)
    return {
        "fds": len(fds),
        "fd_targets": fds,
        "threads": thread_count(pid),
        "rss": rss_bytes(pid),
    }


def log_tracebacks(text: str) -> list[str]:
    """Each traceback in a log, with the line before it (who logged it)."""
    lines = text.splitlines()
    return [
        "\n".join(lines[max(0, i - 1) : i + 4])
        for i, line in enumerate(lines)
        if "Traceback (most recent call last)" in line
    ]


# -- running the master some other way ------------------------------------------------


class PrefixedRun(Run):
    """A Run whose command is `PREFIX... bin/unicornish ARGS` (setpriv, prlimit, env...).

    The prefix programs exec, so the started pid is still the master's.
    """

    def __init__(
        self,
        tmp: Path,
        prefix: list[str],
        args: list[str],
        env: dict[str, str] | None = None,
        log_file: bool = True,
        stderr: Any = None,
    ) -> None:
        super().__init__(tmp, args, env, log_file, prefix=prefix, stderr=stderr)


class ScratchUser:
    """A throwaway system user (root bypasses process limits and permissions)."""

    def __init__(self) -> None:
        self.name = "unitest" + secrets.token_hex(3)
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(self.name)
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid

    def setpriv(self) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
        ]

    def remove(self) -> None:
        for _ in range(50):
            # Kill whatever still runs as this user, by pid, then remove it.
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        if os.stat(f"/proc/{name}").st_uid == self.uid:
                            os.kill(int(name), signal.SIGKILL)
                    except OSError:
                        pass
            done = subprocess.run(["userdel", self.name], capture_output=True)
            if done.returncode == 0:
                return
            time.sleep(0.1)


def scratch_user() -> Iterator[ScratchUser]:
    """For a fixture: `yield from scratch_user()`."""
    user = ScratchUser()
    try:
        yield user
    finally:
        user.remove()


def shared_dir(tmp_path: Path, owner: ScratchUser | None = None) -> Path:
    """A directory a test user can use: pytest's tmp dirs are root-only (0700)."""
    base = Path("/tmp") / f"unicornish-rel-{os.getpid()}-{secrets.token_hex(4)}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    if owner is not None:
        os.chown(base, owner.uid, owner.gid)
    (tmp_path / "shared-dir").write_text(str(base))
    return base


# -- figures into docs/RELIABILITY.md --------------------------------------------------


def normalise(text: str, *paths: Path | str) -> str:
    """Make a message stable across runs: tmp paths and pids become placeholders."""
    for path in sorted((str(p) for p in paths), key=len, reverse=True):
        text = text.replace(path, "DIR")
    text = re.sub(r"pid=\d+", "pid=N", text)
    text = re.sub(r"/tmp/[\w./-]+", "/tmp/...", text)
    return text


def run_meta() -> dict[str, str]:
    import platform

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "recorded_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "pytest " + " ".join(sys.argv[1:]),
        "commit": commit or "?",
        "machine": f"{os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
    }


def record(name: str, data: Any) -> Path:
    """Write one suite's results (JSON) and re-render docs/RELIABILITY.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {**data, "_meta": run_meta()}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    import render_reliability

    render_reliability.render()
    return path


def record_part(name: str, key: str, data: Any) -> Path:
    """Update one entry of a results file (a suite that writes in several tests)."""
    path = RESULTS / f"{name}.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    current[key] = data
    return record(name, current)
