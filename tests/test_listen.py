"""--listen (issue 4): the master binds, workers accept; real sockets, a real client."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers import BIN, alive, loop_app, one_error_line, run_cli, wait_until
from http_client import copy_http_app, get, listen_addresses, tcp_target


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _answers_from_workers(target: str, run, tries: int = 30) -> set[int]:
    """Ask `target` until an answer came; every answer must be from one of run's workers."""
    workers = set(run.worker_pids().values())
    seen = set()
    for _ in range(tries):
        data = get(target)
        assert data["pid"] in workers, (data, workers)
        assert data["master_pid"] == run.pid
        seen.add(data["pid"])
    return seen


def test_workers_accept_on_tcp_and_unix(start, tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    sock_path = tmp_path / "http.sock"
    run = start(
        "--app",
        str(app),
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        f"unix:{sock_path}:0660",
    )
    run.wait_ready(2)
    addresses = listen_addresses(run.log())
    assert len(addresses) == 2 and addresses[1] == f"unix:{sock_path}", addresses
    assert re.match(r"127\.0\.0\.1:\d+$", addresses[0])
    assert _answers_from_workers(addresses[0], run)
    assert _answers_from_workers(addresses[1], run)
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    # The master holds the listeners; its workers have them too (inherited, not bound again).
    master_ports = {c.laddr for c in psutil.Process(run.pid).net_connections("inet")}
    for pid in run.worker_pids().values():
        assert {c.laddr for c in psutil.Process(pid).net_connections("inet")} == master_ports
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0
    # A final exit (no successor) removes the socket file it made.
    assert not sock_path.exists()


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_workers_accept_on_ipv6_loopback(start, tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    run = start("--app", str(app), "--workers", "2", "--listen", "[::1]:0")
    run.wait_ready(2)
    (address,) = listen_addresses(run.log())
    assert address.startswith("[::1]:"), address
    assert _answers_from_workers(address, run)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_stale_unix_socket_is_replaced_live_one_and_plain_file_refused(start, tmp_path, app_file):
    app = copy_http_app(tmp_path / "app.py")
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    assert path.exists()
    run = start("--app", str(app), "--listen", f"unix:{path}")
    run.wait_ready(1)
    assert get(f"unix:{path}")["master_pid"] == run.pid

    # A second master on the same path must not steal the live socket.
    second = subprocess.run(
        [str(BIN), "--app", str(app), "--listen", f"unix:{path}"],
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
    )
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"unicornish: error: cannot listen on unix:{path}: another process is listening there"
    ]
    assert get(f"unix:{path}")["master_pid"] == run.pid

    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    third = subprocess.run(
        [str(BIN), "--app", str(app), "--listen", f"unix:{plain}"],
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
    )
    assert third.returncode == 1
    assert "a file that is not a socket is there" in third.stderr
    assert len(third.stderr.strip().splitlines()) == 1
    assert plain.read_text() == "not a socket"
    run.signal(signal.SIGTERM)
    assert run.wait_exit() == 0


def test_busy_port_is_retried_then_used(start, tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        run = start("--app", str(app), "--listen", f"127.0.0.1:{port}")
        run.wait_log(rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use; retrying")
    finally:
        holder.close()
    run.wait_ready(1)
    assert get(f"127.0.0.1:{port}")["master_pid"] == run.pid
    run.signal(signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_busy_port_gives_up_with_one_line(tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [str(BIN), "--app", str(app), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
            start_new_session=True,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"unicornish: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr
    assert 1.0 < time.monotonic() - started < 10  # retried briefly, then gave up


def test_quit_with_workers_idle_in_accept_exits_within_a_second(start, tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    run = start("--app", str(app), "--workers", "3", "--listen", "127.0.0.1:0")
    run.wait_ready(3)
    target = tcp_target(run.log())
    get(target)
    # Idle in accept(): state is visible in the log only as absence of tasks; give
    # the workers a moment to be back in accept() after that request.
    wait_until(lambda: all(p.status() == psutil.STATUS_SLEEPING for p in run.workers()), 5)
    started = time.monotonic()
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(5) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"QUIT took {elapsed:.2f}s with idle workers\n{run.log()[-2000:]}"
    assert run.count(r"worker\[\d\] exited") == 3


def test_workers_idle_in_accept_leave_when_the_master_dies(start, tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    run = start("--app", str(app), "--workers", "2", "--listen", "127.0.0.1:0")
    workers = [psutil.Process(pid) for pid in run.wait_ready(2).values()]
    started = time.monotonic()
    run.signal(signal.SIGKILL)
    wait_until(lambda: not any(alive(p.pid) for p in workers), 5, "orphaned workers to exit")
    assert time.monotonic() - started < 1.0
    run.wait_log(r"worker\[\d\] master pid=\d+ is gone", 2)


# A worker that has accepted a connection must answer it, even when QUIT comes
# between accept() and the answer.
SLOW_ANSWER_APP = """
import time
def worker_start(worker):
    got = worker.accept()
    if got is None:
        return
    conn, _ = got
    with conn:
        conn.recv(1024)
        print("accepted", flush=True)
        time.sleep(0.7)
        conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 4\\r\\n\\r\\nlate")
"""


def test_accepted_connection_is_answered_across_quit(start, app_file):
    app = app_file(SLOW_ANSWER_APP)
    run = start("--app", str(app), "--listen", "127.0.0.1:0")
    run.wait_ready(1)
    host, _, port = tcp_target(run.log()).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        wait_until(lambda: "accepted" in run.stdout(), 5, "the worker to accept")
        run.signal(signal.SIGQUIT)
        data = b""
        while chunk := client.recv(4096):
            data += chunk
    assert data.endswith(b"late"), data
    assert run.wait_exit() == 0
    assert "exited" in run.log()


def _run_with_fd(args: list[str], env: dict[str, str], fds: tuple[int, ...] = ()):
    full = dict(os.environ)
    full.update(env)
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=full,
        pass_fds=fds,
        start_new_session=True,
    )


def test_unicornish_fd_is_validated(tmp_path):
    app = copy_http_app(tmp_path / "app.py")
    args = ["--app", str(app)]
    cases: list[tuple[str, str, tuple[int, ...]]] = [
        ("97", "UNICORNISH_FD: fd 97 is not open", ()),
        ("x7", "UNICORNISH_FD='x7': expected comma-separated fd numbers", ()),
        ("1", "UNICORNISH_FD='1': fd 1 is stdin/stdout/stderr", ()),
    ]
    with open(app, "rb") as regular:
        cases.append((str(regular.fileno()), "is not a socket", (regular.fileno(),)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            cases.append((str(udp.fileno()), "is not a listening stream socket", (udp.fileno(),)))
            with socket.socket() as tcp:  # a stream socket, but not listening
                cases.append(
                    (str(tcp.fileno()), "is not a listening stream socket", (tcp.fileno(),))
                )
                with socket.socket() as listening:
                    listening.bind(("127.0.0.1", 0))
                    listening.listen(1)
                    fd = listening.fileno()
                    cases.append((f"{fd},{fd}", f"fd {fd} is listed twice", (fd,)))
                    for value, message, fds in cases:
                        result = _run_with_fd(args, {"UNICORNISH_FD": value}, fds)
                        assert result.returncode == 1, (value, result.stderr)
                        lines = result.stderr.strip().splitlines()
                        assert len(lines) == 1 and message in lines[0], (value, lines)
                        assert lines[0].startswith("unicornish: error: "), lines


# -- unix socket paths and modes ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["999", "0o660", "1777", "", "0660x"])
def test_bad_unix_socket_mode_is_refused(tmp_path: Path, mode: str) -> None:
    app = tmp_path / "app.py"
    app.write_text(loop_app())
    sock = tmp_path / "x.sock"
    result = run_cli("--app", str(app), "--listen", f"unix:{sock}:{mode}", cwd=tmp_path)
    one_error_line(result, 2, "--listen", "mode must be octal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]  # no x.sock:999


def test_unix_socket_paths_with_a_colon(start, tmp_path: Path) -> None:
    """A ':' followed by a directory stays in the path; a path whose last ':' is
    followed by a digit takes an explicit mode after it."""
    app = tmp_path / "app.py"
    app.write_text(loop_app())
    (tmp_path / "a:b").mkdir()
    in_dir = tmp_path / "a:b" / "x.sock"
    digits = tmp_path / "app:1"
    run = start("--app", str(app), "--listen", f"unix:{in_dir}", "--listen", f"unix:{digits}:0600")
    run.wait_ready(1)
    log = run.log()
    assert f"listening on unix:{in_dir} fd=" in log and f"listening on unix:{digits} fd=" in log
    assert in_dir.is_socket() and digits.is_socket()
    assert digits.stat().st_mode & 0o777 == 0o600
