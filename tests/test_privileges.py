"""--user USER[:GROUP] (issue 5): workers drop privileges after fork; the master keeps its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import psutil
import pytest
from helpers import BIN, run_cli, wait_until
from other_user import open_dir, temp_user

APP = """
import ctypes, os, time
OUT = {out!r}
with open(os.path.join(OUT, f"import-{{os.getpid()}}"), "w") as f:
    f.write(f"{{os.getuid()}} {{os.getgid()}}")
def after_fork(worker):
    sig = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
    with open(os.path.join(OUT, f"fork-{{worker.nr}}"), "w") as f:
        f.write(f"{{os.getuid()}} {{os.getgid()}} {{sig.value}}")
def worker_start(worker):
    worker.log.info("worker[%d] task as uid %d", worker.nr, os.getuid())
    time.sleep(0.2)
"""


def groups_of(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    return set()


def test_workers_drop_to_the_user_and_can_still_reopen_the_log(start):
    with temp_user() as user, open_dir() as shared:
        out = shared / "out"
        out.mkdir()
        out.chmod(0o777)
        app = shared / "app.py"
        app.write_text(APP.format(out=str(out)))
        log_path = shared / "unicornish.host.log"
        run = start(
            "--app", str(app), "--workers", "2", "--user", user.name, "--log-file", str(log_path),
            log_file=False,
        )  # fmt: skip
        run.log_path = log_path
        pids = run.wait_ready(2)
        wait_until(lambda: (out / "fork-0").exists() and (out / "fork-1").exists(), 5, "hooks")
        for nr, pid in pids.items():
            proc = psutil.Process(pid)
            assert tuple(proc.uids()) == (user.uid,) * 3
            assert tuple(proc.gids()) == (user.gid,) * 3
            assert groups_of(pid) == {user.gid, user.extra_gid}
            # after_fork runs as the user, and the parent-death signal survived the
            # switch (changing uid clears it: it is set after the drop).
            expected = f"{user.uid} {user.gid} {int(signal.SIGQUIT)}"
            assert (out / f"fork-{nr}").read_text() == expected
        # The app itself was loaded as the user (not preloaded): every import, the
        # start-up check's included, ran under the user's uid.
        imports = list(out.glob("import-*"))
        assert len(imports) >= 3
        assert {p.read_text() for p in imports} == {f"{user.uid} {user.gid}"}
        master = psutil.Process(run.pid)
        assert master.uids().real == 0 and master.uids().effective == 0
        assert os.stat(log_path).st_uid == user.uid

        # Rotation: the master creates the new file, hands it to the user, and
        # the workers reopen it themselves.
        os.rename(log_path, shared / "unicornish.host.log.1")
        run.signal(signal.SIGUSR1)
        wait_until(lambda: log_path.exists(), 5, "a new log file")
        wait_until(
            lambda: (
                "worker[0] task as uid" in log_path.read_text()
                and "worker[1] task as uid" in log_path.read_text()
            ),
            5,
            "workers writing to the new file",
        )
        assert os.stat(log_path).st_uid == user.uid
        assert "cannot reopen" not in log_path.read_text()
        assert "cannot reopen" not in (shared / "unicornish.host.log.1").read_text()
        run.signal(signal.SIGTERM)
        assert run.wait_exit(5) == 0


def test_user_with_group_and_numeric_ids(start):
    with temp_user() as user, open_dir() as shared:
        app = shared / "app.py"
        app.write_text("import time\ndef worker_start(worker):\n    time.sleep(0.1)\n")
        run = start("--app", str(app), "--workers", "1", "--user", f"{user.uid}:{user.extra_group}")
        pid = run.wait_ready(1)[0]
        proc = psutil.Process(pid)
        assert proc.uids().effective == user.uid
        assert tuple(proc.gids()) == (user.extra_gid,) * 3
        run.signal(signal.SIGTERM)
        assert run.wait_exit(5) == 0


def test_not_permitted_is_a_clear_error_before_any_fork(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("def worker_start(worker):\n    pass\n")
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to run a root master without CAP_SETUID")
        cmd = [setpriv, "--bounding-set=-setuid,-setgid", str(BIN), "--app", str(app)]
        cmd += ["--user", "nobody"]
    else:
        cmd = [str(BIN), "--app", str(app), "--user", "root"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=str(tmp_path))
    if "setpriv:" in result.stderr:
        pytest.skip(f"this kernel/container refuses setpriv: {result.stderr.strip()}")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unicornish: error: --user ")
    assert "cannot switch user: Operation not permitted" in lines[0]


def test_unknown_user_or_group_and_bad_spec(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("def worker_start(worker):\n    pass\n")
    result = run_cli("--app", str(app), "--user", "no-such-user-xyz", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "unicornish: error: --user no-such-user-xyz: no such user 'no-such-user-xyz'"
    )
    result = run_cli("--app", str(app), "--user", "root:no-such-group-xyz", cwd=tmp_path)
    assert result.returncode == 1 and "no such group 'no-such-group-xyz'" in result.stderr
    for spec in ("a:b:c", "root:", ":root"):
        result = run_cli("--app", str(app), "--user", spec, cwd=tmp_path)
        assert result.returncode == 2, (spec, result.stderr)
        assert "USER or USER:GROUP" in result.stderr
