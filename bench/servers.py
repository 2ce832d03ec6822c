"""How to start, signal and stop each master under test: unicornish, gunicorn, Unicorn.

Each peer runs a tiny app from bench/apps/ whose workers announce readiness
on the bench's datagram socket ("ready PID MONOTONIC"): unicornish on the
first call of worker_start, gunicorn from post_worker_init, Unicorn from
after_worker_ready. Everything else is each peer's default.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from harness import Announcements, BenchError, Inbox, Msg, Reaper, Sessions, ready_pids

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, "apps")
VENV_BIN = os.path.join(BENCH, ".venv", "bin")

PEERS = ("unicornish", "gunicorn", "unicorn")


def unicornish_cmd() -> list[str] | None:
    exe = os.path.join(VENV_BIN, "unicornish")
    if os.access(exe, os.X_OK):
        return [exe]
    if os.path.isdir(os.path.join(ROOT, "unicornish")):
        return [sys.executable, "-m", "unicornish"]
    return None


def gunicorn_cmd() -> list[str] | None:
    exe = os.path.join(VENV_BIN, "gunicorn")
    if os.access(exe, os.X_OK):
        return [exe]
    exe = shutil.which("gunicorn")
    return [exe] if exe else None


def unicorn_cmd() -> list[str] | None:
    exe = shutil.which("unicorn")
    return [exe] if exe else None


def availability() -> dict[str, str | None]:
    """peer -> None when usable, else the reason it is not."""
    out: dict[str, str | None] = {}
    out["unicornish"] = None if unicornish_cmd() else "not installed (run bash bench/setup.sh)"
    out["gunicorn"] = None if gunicorn_cmd() else "not installed (run bash bench/setup.sh)"
    out["unicorn"] = None if unicorn_cmd() else "not installed (make bench-peers)"
    return out


def versions() -> dict[str, str]:
    out = {}
    for name, cmd, args in (
        ("unicornish", unicornish_cmd(), ["--version"]),
        ("gunicorn", gunicorn_cmd(), ["--version"]),
        ("unicorn", unicorn_cmd(), ["-v"]),
    ):
        if not cmd:
            out[name] = "not installed"
            continue
        try:
            r = subprocess.run(
                cmd + args, capture_output=True, text=True, timeout=20, cwd=APPS, env=base_env()
            )
            text = (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
            out[name] = text.replace(name, "").replace("(version", "").strip(" ()v") or text
        except (OSError, subprocess.SubprocessError, IndexError):
            out[name] = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["ruby", "-v"], capture_output=True, text=True, timeout=20)
        out["ruby"] = r.stdout.strip()
    out["python"] = sys.version.split()[0]
    return out


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [APPS, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.pop("NOTIFY_SOCKET", None)
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_PID", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# The signal each peer documents for a graceful stop (gunicorn: TERM; QUIT is its quick stop).
GRACEFUL = {"unicornish": signal.SIGQUIT, "gunicorn": signal.SIGTERM, "unicorn": signal.SIGQUIT}


@dataclass
class Master:
    peer: str
    proc: subprocess.Popen
    inbox: Inbox
    tmp: str
    log: str
    t_launch: float
    workers: int | str
    env: dict[str, str] = field(repr=False, default_factory=dict)
    listen: str = ""  # unicornish's --listen unix socket path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def msgs(self) -> list[Msg]:
        return self.inbox.msgs

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Launcher:
    """Starts masters and guarantees they are all gone at the end."""

    def __init__(self, workdir: str, verbose: bool = False) -> None:
        self.workdir = workdir
        self.verbose = verbose
        self.sessions = Sessions()
        self.reaper = Reaper()
        self.ann = Announcements()
        self.masters: list[Master] = []
        self._n = 0

    def start(
        self,
        peer: str,
        workers: int | str,
        *,
        app: str = "idle",
        preload: bool = False,
        timeout: int | None = None,
        extra_env: dict[str, str] | None = None,
        spares: int = 0,
        extra_args: list[str] | None = None,
        control: bool = False,
    ) -> Master:
        """app: 'idle' (waits on a listener), 'heap' (~100 MB preloaded), 'loop' (empty task),
        'burst' (one job per connection, of the length the client asks for; unicornish only),
        'lazy' (state built over the first tasks, BENCH_LAZY in extra_env; gunicorn: the
        same tasks as requests, from gunicorn_app.py).
        workers: a count, or for unicornish anything --workers takes ("2:8")."""
        self._n += 1
        tmp = tempfile.mkdtemp(prefix=f"{peer}-{self._n}-", dir=self.workdir)
        listen = os.path.join(tmp, "listen.sock")
        log = os.path.join(tmp, "master.log")
        env = base_env()
        env.update(
            BENCH_WORKERS=str(workers),
            BENCH_LISTEN=listen,
            BENCH_PRELOAD="1" if preload else "0",
            BENCH_TIMEOUT=str(timeout) if timeout else "",
            BENCH_CTL=os.path.join(tmp, "ctl.sock"),
            BENCH_HEAP="1" if app == "heap" else "0",
        )
        env.update(extra_env or {})
        if peer == "unicornish":
            cmd = unicornish_cmd()
            appfile = {
                "idle": "uni_idle.py",
                "heap": "uni_heap.py",
                "loop": "uni_loop.py",
                "burst": "uni_burst.py",
                "lazy": "uni_lazy.py",
            }[app]
            assert cmd
            cmd = cmd + ["--app", os.path.join(APPS, appfile), "--workers", str(workers)]
            if app != "loop":
                cmd += ["--listen", "unix:" + listen]
            if preload:
                cmd.append("--preload")
            if timeout:
                cmd += ["--timeout", str(timeout)]
            if spares:
                cmd += ["--spares", str(spares)]
            cmd += extra_args or []
            if control:
                cmd += ["--control", env["BENCH_CTL"]]
        elif peer == "gunicorn":
            cmd = gunicorn_cmd()
            assert cmd and app != "loop"
            cmd = cmd + ["-c", os.path.join(APPS, "gunicorn_conf.py"), "gunicorn_app:application"]
        elif peer == "unicorn":
            cmd = unicorn_cmd()
            assert cmd and app != "loop"
            cmd = cmd + [
                "-c",
                os.path.join(APPS, "unicorn.conf.rb"),
                os.path.join(APPS, "config.ru"),
            ]
        else:
            raise ValueError(peer)
        inbox = self.ann.open(os.path.join(tmp, "ready.sock"))
        env["BENCH_READY_SOCK"] = inbox.path
        logf = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=APPS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            logf.close()
        self.sessions.add(proc.pid)
        m = Master(peer, proc, inbox, tmp, log, t0, workers, env, listen)
        self.masters.append(m)
        if self.verbose:
            print(f"  [{peer}] pid={proc.pid} {' '.join(cmd[1:])}", file=sys.stderr)
        return m

    def wait_ready(
        self, m: Master, n: int, since: int = 0, timeout: float = 60.0
    ) -> dict[int, float]:
        """Wait until n distinct workers announced readiness (messages from index `since`)."""

        def enough(msgs: list[Msg]) -> dict[int, float] | None:
            got = ready_pids(msgs, since)
            return got if len(got) >= n else None

        try:
            got = self.ann.wait(m.inbox, lambda msgs: enough(msgs) or self._dead(m), timeout)
        except BenchError as exc:
            raise BenchError(f"{m.peer}: {exc}; log tail:\n{m.log_tail()}") from None
        if got == "dead":
            raise BenchError(f"{m.peer}: master exited early; log tail:\n{m.log_tail()}")
        assert isinstance(got, dict)
        return got

    def _dead(self, m: Master) -> str | None:
        return "dead" if m.pid in self.reaper.statuses else None

    def stop(self, m: Master, graceful_wait: float = 0.0) -> None:
        """End a master and its whole session; optionally ask nicely first."""
        if graceful_wait > 0 and m.pid not in self.reaper.statuses:
            with contextlib.suppress(OSError):
                os.kill(m.pid, GRACEFUL[m.peer])
            self.reaper.wait_reaped(m.pid, graceful_wait)
        self.sessions.kill(m.pid)
        self.reaper.wait_reaped(m.pid, 5.0)
        self.ann.close(m.inbox)
        with contextlib.suppress(ValueError):
            self.masters.remove(m)

    def close(self) -> None:
        for m in list(self.masters):
            with contextlib.suppress(Exception):
                self.sessions.kill(m.pid, timeout=5.0)
        self.sessions.kill_all()
        self.ann.shutdown()
