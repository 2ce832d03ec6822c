"""bin/unicornish, the launcher of a checkout: before `make`, it says what to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, one_error_line


def _python_without_deps(where: Path) -> Path:
    """A bare venv (no pip, no system site-packages): what `python3` is on a machine
    where nobody ran `make` yet, as far as psutil and setproctitle go."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python3"
    probe = subprocess.run([str(python), "-c", "import psutil"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("psutil is importable even from a bare venv here")
    return python


def test_launcher_without_dependencies_says_what_to_run(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    for part in ("bin", "unicornish"):
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    python = _python_without_deps(tmp_path / "bare")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{python.parent}:/usr/bin:/bin"  # no .venv in the clone: python3 from PATH
    for args in (["--help"], ["--app", "app.py"], ["status", "--help"]):
        result = subprocess.run(
            [str(clone / "bin" / "unicornish"), *args],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=str(tmp_path),  # not a checkout: `-m` would import from the cwd first
            env=env,
            stdin=subprocess.DEVNULL,
        )
        line = one_error_line(result, 1, "psutil", "make run", "pip install -e")
        assert str(clone) in line
