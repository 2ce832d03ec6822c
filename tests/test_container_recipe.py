"""The container recipe (contrib/container/Containerfile) and the Kubernetes manifests
(contrib/kubernetes/*.yaml) against each other and against unicornish's own options:
what the container really runs (ENTRYPOINT + CMD, or the pod's command/args), a grace
period above --drain + --graceful-timeout, probes on the --metrics port and paths,
and resource limits that --workers auto turns into the same worker count."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from helpers import free_port

from unicornish.cli import build_parser
from unicornish.config import OPTIONS_BY_NAME, Settings

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "contrib" / "container" / "Containerfile"
MANIFESTS = sorted((ROOT / "contrib" / "kubernetes").glob("*.yaml"))


# -- the Containerfile ------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction: comments dropped, `\\` continuations joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    assert not pending, "a continuation at the end of the file"
    return found


def last(found: list[tuple[str, str]], keyword: str) -> str | None:
    values = [rest for kw, rest in found if kw == keyword]
    return values[-1] if values else None


def exec_form(keyword: str, rest: str | None) -> list[str]:
    """ENTRYPOINT/CMD in exec form (a JSON array): no /bin/sh -c between the runtime
    and unicornish, so the master is PID 1 and gets the stop signal itself."""
    assert rest is not None, f"no {keyword}"
    assert rest.startswith("["), f"{keyword} is in shell form: {rest}"
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


IMAGE = instructions(CONTAINERFILE)


def entrypoint() -> list[str]:
    # Read by each test, not at import: a broken file fails tests, not the collection.
    return exec_form("ENTRYPOINT", last(IMAGE, "ENTRYPOINT"))


def cmd() -> list[str]:
    return exec_form("CMD", last(IMAGE, "CMD"))


def parse_options(argv: list[str]) -> dict[str, Any]:
    """unicornish's own parser reads the arguments (a bad one fails the test). --metrics
    comes with the metrics endpoint: until the parser knows it, it is read here."""
    args = list(argv)
    values: dict[str, Any] = {}
    if "metrics" not in OPTIONS_BY_NAME:
        while "--metrics" in args:
            i = args.index("--metrics")
            values["metrics"] = args[i + 1]
            del args[i : i + 2]
    values.update(vars(build_parser().parse_args(args)))
    return values


def test_the_image_runs_unicornish_as_pid_1_with_a_graceful_term_and_a_drain():
    argv = entrypoint()
    assert argv[0] == "unicornish", argv  # no shell, no init wrapper
    assert not {"sh", "/bin/sh", "bash", "-c", "tini", "dumb-init"} & set(argv)
    options = parse_options(argv[1:] + cmd())
    assert options["term"] == "graceful"
    assert options["drain"] > 0
    assert options["workers"] == "auto"
    assert options["worker_memory"] and options["worker_memory"] > 0
    assert options["app"] and options["listen"]
    assert re.fullmatch(r"0\.0\.0\.0:\d+", options["metrics"]), "probes come from outside"
    assert last(IMAGE, "STOPSIGNAL") in (None, "SIGTERM", "TERM", "15")


def test_the_image_is_a_slim_python_and_runs_as_a_numeric_non_root_user():
    base = last(IMAGE, "FROM")
    assert base and re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base.split()[0]), base
    user = last(IMAGE, "USER")
    assert user is not None, "runs as root"
    uid = user.split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot can verify only a numeric user.
    assert uid.isdigit() and int(uid) != 0, user
    exposed = {int(port.split("/")[0]) for port in (last(IMAGE, "EXPOSE") or "").split()}
    options = parse_options(entrypoint()[1:] + cmd())
    assert port_of(options["metrics"]) in exposed
    assert {port_of(address) for address in options["listen"]} <= exposed


# -- the manifests ----------------------------------------------------------------------


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def cpus(quantity: Any) -> float:
    """A Kubernetes CPU quantity: 2, "2", "1.5", "1500m"."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def mebibytes(quantity: Any) -> float:
    """A Kubernetes memory quantity ("512Mi", "1Gi", "536870912"), in MiB."""
    text = str(quantity)
    for suffix, factor in MEMORY_UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor / 2**20
    return float(text) / 2**20


def deployments() -> list[dict[str, Any]]:
    found = []
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "Deployment":
                found.append(document)
    return found


try:
    DEPLOYMENTS = deployments()
except yaml.YAMLError:
    DEPLOYMENTS = []  # test_there_is_a_deployment says why; the collection goes on


def test_there_is_a_deployment():
    found = deployments()  # raises what a broken manifest has
    assert found, f"no Deployment in {[p.name for p in MANIFESTS]}"
    for deployment in found:
        assert deployment["apiVersion"] == "apps/v1"
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (d["spec"]["template"]["spec"], c)
        for d in DEPLOYMENTS
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def effective_argv(container: dict[str, Any]) -> list[str]:
    """What Kubernetes runs: `command` replaces ENTRYPOINT, `args` replaces CMD."""
    command = container["command"] if "command" in container else entrypoint()
    if "args" in container:
        args = container["args"]
    else:
        args = [] if "command" in container else cmd()
    return [str(word) for word in [*command, *args]]


def probe_port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"probe port {port!r} is not a named port of the container"
    return int(named[port])


@pytest.mark.parametrize("pod, container", containers(), ids=lambda v: v.get("name", "pod"))
def test_grace_period_covers_the_drain_and_the_graceful_timeout(pod, container):
    argv = effective_argv(container)
    assert argv[0] == "unicornish", argv
    options = parse_options(argv[1:])
    assert options["term"] == "graceful"  # Kubernetes stops a container with TERM
    drain = options.get("drain", Settings().drain)
    grace = options.get("graceful_timeout", Settings().graceful_timeout)
    assert drain > 0
    # Kubernetes' default is 30 s: without the key, a 5 + 30 s stop would be SIGKILLed.
    period = pod.get("terminationGracePeriodSeconds", 30)
    assert period > drain + grace, (period, drain, grace)


@pytest.mark.parametrize("pod, container", containers(), ids=lambda v: v.get("name", "pod"))
def test_probes_ask_the_metrics_endpoint(pod, container):
    options = parse_options(effective_argv(container)[1:])
    metrics_port = port_of(options["metrics"])
    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert probe_port(container, ready["port"]) == metrics_port
    assert probe_port(container, live["port"]) == metrics_port
    # The app's own port is declared too, and is the one unicornish listens on.
    declared = {int(p["containerPort"]) for p in container["ports"]}
    assert {port_of(address) for address in options["listen"]} <= declared


@pytest.mark.parametrize("pod, container", containers(), ids=lambda v: v.get("name", "pod"))
def test_limits_give_workers_auto_one_count(pod, container):
    """--workers auto: ceil(CPU limit) workers, at most floor(memory limit / --worker-memory).
    Limits that agree waste neither: no CPU without a worker, no memory nobody may use."""
    options = parse_options(effective_argv(container)[1:])
    assert options["workers"] == "auto"
    limits = container["resources"]["limits"]
    by_cpu = math.ceil(cpus(limits["cpu"]))
    by_memory = max(1, math.floor(mebibytes(limits["memory"]) / options["worker_memory"]))
    assert by_cpu == by_memory, (limits, options["worker_memory"])
    # Requests equal to the limits: the pod gets what --workers auto planned for.
    requests = container["resources"].get("requests", {})
    assert cpus(requests.get("cpu", 0)) == cpus(limits["cpu"])
    assert mebibytes(requests.get("memory", 0)) == mebibytes(limits["memory"])


@pytest.mark.parametrize("pod, container", containers(), ids=lambda v: v.get("name", "pod"))
def test_a_latest_image_is_not_pulled_always(pod, container):
    """Without imagePullPolicy, `:latest` (or no tag) means Always: a locally
    built image (the recipe's `podman build`) could never run."""
    image = container["image"]
    name = image.rsplit("/", 1)[-1]
    if ":" not in name or name.endswith(":latest"):
        assert container.get("imagePullPolicy") in ("IfNotPresent", "Never"), image


@pytest.mark.parametrize("pod, container", containers(), ids=lambda v: v.get("name", "pod"))
def test_the_pod_runs_as_the_images_user(pod, container):
    uid = int((last(IMAGE, "USER") or "0").split(":")[0])
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser", uid) == uid


# -- the image, replayed: what it installs, started as it starts ------------------------

# RUN steps the replay leaves out: they change the image's system, not what runs
# (a new kind of step fails the test, so that the replay is looked at again).
NOT_REPLAYED = ("rm ", "groupadd ", "useradd ")


def in_root(root: Path, word: str) -> str:
    """An absolute path of the image, inside the replay's root directory."""
    return str(root) + word if word.startswith("/") else word


def replay_copy(root: Path, workdir: str, rest: str) -> None:
    """COPY SRC... DEST, from the checkout (the build context) into the root."""
    words = [w for w in rest.split() if not w.startswith("--")]
    sources, dest = words[:-1], words[-1]
    target = Path(in_root(root, dest if dest.startswith("/") else f"{workdir}/{dest}"))
    into_dir = dest.endswith("/") or len(sources) > 1
    for source in sources:
        path = ROOT / source
        if path.is_dir():  # the directory's contents, as COPY does
            shutil.copytree(
                path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            destination = target / path.name if into_dir else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination)


def replay_run(root: Path, venv: Path, rest: str) -> None:
    """The image's `pip install` steps, into the fresh venv (pip's cache allowed:
    it changes how long, not what is installed)."""
    for step in (s.strip() for s in rest.split("&&")):
        if step.startswith(NOT_REPLAYED):
            continue
        words = shlex.split(step)
        assert words[:2] == ["pip", "install"], f"a RUN step the replay does not know: {step}"
        args = [in_root(root, w) for w in words[2:] if w != "--no-cache-dir"]
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]


def readyz(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
            head = s.recv(4096)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/") else None


def test_the_image_installed_as_its_lines_say_starts_and_gets_ready(tmp_path):
    """The Containerfile's own install into a fresh venv, then its ENTRYPOINT and
    CMD (ports moved to free ones, paths into the replay's root): the master must
    get ready and /readyz answer 200, as the pod's readiness probe asks. An
    install that misses what the arguments need (the metrics extra) fails here."""
    root, venv = tmp_path / "root", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    workdir = "/"
    for keyword, rest in IMAGE:
        if keyword == "COPY":
            replay_copy(root, workdir, rest)
        elif keyword == "RUN":
            replay_run(root, venv, rest)
        elif keyword == "ENV":
            env.update(dict(shlex.split(pair)[0].split("=", 1) for pair in rest.split()))
        elif keyword == "WORKDIR":
            workdir = rest
    ports: dict[str, str] = {}

    def moved(word: str) -> str:
        if re.fullmatch(r"0\.0\.0\.0:\d+", word):
            ports[word] = ports.get(word) or f"0.0.0.0:{free_port()}"
            return ports[word]
        return in_root(root, word)

    argv = [moved(word) for word in entrypoint() + cmd()]
    metrics_port = port_of(parse_options(argv[1:])["metrics"])
    (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    master = subprocess.Popen(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        cwd=root / workdir.lstrip("/"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while readyz(metrics_port) != 200:
            if master.poll() is not None:
                said = master.stdout.read() if master.stdout else ""
                pytest.fail(f"the image's command exited {master.returncode}: {said}")
            assert time.monotonic() < deadline, "not ready within 30 s"
            time.sleep(0.1)  # polling an HTTP probe, as the kubelet does
        family = psutil.Process(master.pid).children(recursive=True)
        master.send_signal(signal.SIGINT)  # a quick stop: the drain is tested elsewhere
        output, _ = master.communicate(timeout=15)
        assert master.returncode == 0, output
    finally:
        for proc in [psutil.Process(master.pid)] if master.poll() is None else []:
            family += proc.children(recursive=True)
            proc.kill()
        for proc in family:
            try:
                proc.kill()
            except psutil.Error:
                pass
        master.wait(10)
