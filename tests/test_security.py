"""Security (issue 7): the pid file and the control socket are never created
through a symlink someone else planted, nor with modes that let others write
them; the control socket refuses other users; a worker that dropped to
--user cannot signal, ptrace or read its master."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import loop_app, wait_until, worker_children
from other_user import open_dir as world_readable_dir
from reliability import PrefixedRun, ScratchUser, scratch_user

UMASK_0 = ["sh", "-c", 'umask 0 && exec "$@"', "sh"]


@pytest.fixture
def user() -> Iterator[ScratchUser]:
    yield from scratch_user()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """Like /tmp or /run/lock: world-writable and sticky, where others can plant files."""
    import secrets

    path = Path("/tmp") / f"unicornish-sec-{secrets.token_hex(4)}"
    path.mkdir()
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: ScratchUser, action: Callable[[], Any]) -> Any:
    """Run `action` in a forked child that became `user`; return what it returned."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            try:
                result: Any = action()
            except OSError as exc:
                result = f"{type(exc).__name__}: {exc.strerror}"
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(data)


def start_in(directory: Path, *args: str, prefix: list[str] | None = None) -> PrefixedRun:
    (directory / "app.py").write_text(loop_app())
    return PrefixedRun(directory, prefix or UMASK_0, ["--app", str(directory / "app.py"), *args])


def test_pid_file_is_never_written_through_a_planted_symlink(public_dir, user, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's precious file\n")
    pid_path = public_dir / "u.pid"
    as_user(user, lambda: os.symlink(victim, pid_path))
    # And at the temporary names the master writes first (`.u.pid.PID.tmp`), for
    # the pids it is likely to get.
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    bait = [public_dir / f".u.pid.{pid}.tmp" for pid in range(last + 1, last + 300)]
    as_user(user, lambda: [os.symlink(victim, path) for path in bait] and None)
    assert pid_path.is_symlink() and pid_path.lstat().st_uid == user.uid
    run = start_in(tmp_path, "--pid", str(pid_path), "--workers", "1")
    try:
        run.wait_ready(1)
        wait_until(lambda: not pid_path.is_symlink() and pid_path.exists(), 5, "a real pid file")
        st = pid_path.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0
        assert st.st_mode & 0o022 == 0, oct(st.st_mode)  # umask 0, still not writable by others
        assert pid_path.read_text().strip() == str(run.pid)
        assert victim.read_text() == "root's precious file\n"
        assert public_dir / f".u.pid.{run.pid}.tmp" in bait  # the bait was in its way
        # The other user cannot replace it now (sticky directory, root's file).
        assert as_user(user, lambda: os.unlink(pid_path)).startswith("PermissionError")
        run.signal(signal.SIGTERM)
        assert run.wait_exit(10) == 0
        assert not pid_path.exists() and victim.read_text() == "root's precious file\n"
    finally:
        run.cleanup()


def test_control_socket_is_never_created_through_a_planted_symlink(public_dir, user, tmp_path):
    target = tmp_path / "elsewhere.sock"
    path = public_dir / "ctl.sock"
    as_user(user, lambda: os.symlink(target, path))
    run = start_in(tmp_path, "--control", str(path))
    try:
        assert run.wait_exit(10) == 1
        err = run.log().strip().splitlines()
        assert err[-1].startswith("unicornish: error: control socket") and "not a socket" in err[-1]
        assert not target.exists() and path.is_symlink()
    finally:
        run.cleanup()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp dirs are root's alone)."""
    with world_readable_dir() as path:
        yield path


def test_control_socket_mode_and_other_users_refused(open_dir, user):
    work = open_dir
    path = work / "ctl.sock"
    run = start_in(work, "--control", str(path), "--workers", "2")
    try:
        pids = run.wait_ready(2)
        wait_until(path.exists, 5, "the control socket")
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)

        def ask(line: bytes) -> Any:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                try:
                    sock.sendall(line)
                except BrokenPipeError:
                    pass  # refused at once: the reply is already waiting to be read
                return sock.makefile("rb").readline().decode()

        # Another user cannot even connect: the socket file is 0600.
        assert as_user(user, lambda: ask(b"stop\n")).startswith("PermissionError")
        # Even if someone loosens the mode, the master checks the peer's uid.
        os.chmod(path, 0o666)
        reply = json.loads(as_user(user, lambda: ask(b'{"command": "stop"}\n')))
        assert reply == {"ok": False, "error": "permission denied"}
        run.wait_log(rf"control: refused a connection from pid=\d+ uid={user.uid}", 1, 5)
        assert run.proc.poll() is None and run.worker_pids() == pids  # nothing was stopped
        assert json.loads(ask(b"status\n"))["ok"] is True  # root still may
    finally:
        run.cleanup()


PROBE_APP = """
import ctypes, json, os, signal, time

PTRACE_ATTACH = 16

def try_(action):
    try:
        result = action()
        return "allowed" if result in (None, 0, True) or isinstance(result, bytes) else repr(result)
    except OSError as exc:
        return type(exc).__name__

def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PTRACE_ATTACH, pid, 0, 0) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0

def read(path):
    with open(path, "rb") as handle:
        return handle.read(16)

def worker_start(worker):
    if worker.tasks == 0:
        master = worker.master_pid
        found = {
            "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
            "kill_term": try_(lambda: os.kill(master, signal.SIGTERM)),
            "kill_zero": try_(lambda: os.kill(master, 0)),
            "ptrace": try_(lambda: ptrace(master)),
            "mem": try_(lambda: read(f"/proc/{master}/mem")),
            "environ": try_(lambda: read(f"/proc/{master}/environ")),
            "setuid_root": try_(lambda: os.setuid(0)),
        }
        with open(os.environ["PROBE_OUT"] + f".{os.getpid()}", "w") as out:
            json.dump(found, out)
    time.sleep(0.05)
"""


def test_worker_after_user_cannot_signal_or_ptrace_its_master(tmp_path, user):
    work = Path("/tmp") / f"unicornish-sec-{os.getpid()}-{user.name}"
    work.mkdir(mode=0o755)
    try:
        os.chmod(work, 0o755)
        out = work / "out"
        out.mkdir()
        os.chown(out, user.uid, user.gid)
        (work / "app.py").write_text(PROBE_APP)
        os.chmod(work / "app.py", 0o644)
        prefix = ["env", f"PROBE_OUT={out}/probe", *UMASK_0]
        run = PrefixedRun(
            work, prefix, ["--app", str(work / "app.py"), "--user", user.name, "--workers", "1"]
        )
        try:
            pids = run.wait_ready(1, 15)
            probe = out / f"probe.{pids[0]}"
            wait_until(probe.exists, 10, f"the probe's findings:\n{run.log()[-2000:]}")
            wait_until(lambda: probe.read_text().endswith("}"), 5, "the whole file")
            found = json.loads(probe.read_text())
            assert found["uid"] == found["euid"] == user.uid
            assert found["groups"] in ([], [user.gid])
            for what in ("kill_term", "kill_zero", "ptrace", "mem", "environ", "setuid_root"):
                assert found[what] == "PermissionError", (what, found)
            assert run.proc.poll() is None and worker_children(run.pid) == [pids[0]]
        finally:
            run.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)
