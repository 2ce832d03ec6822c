"""The documentation against the code: every option, master signal, control
command and status field is documented, README's `make run` transcript has
the lines the master prints, and no link leaves the repository."""

from __future__ import annotations

import ast
import inspect
import re
import signal
import textwrap
import types
from pathlib import Path

import pytest

from unicornish.config import OPTIONS
from unicornish.ctl import commands
from unicornish.master import readiness
from unicornish.options import markdown_table, replace_table
from unicornish.protocol import HANDLED_SIGNALS
from unicornish.worker.process import Worker

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference.md"
# What users read. (CHANGELOG.md is history, and not checked here.)
USER_DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip() for cell in cells])
    return rows


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_link_leaves_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "SPEC.md" not in text and "shared/" not in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https://...
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links outside: {target}"
        assert resolved.exists(), f"{path.name} links to a missing file: {target}"
    # An anchor names a heading of its page (the README's sections moved to docs/).
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
        page = (path.parent / target).resolve() if target else path
        if page.suffix == ".md" and page.exists():
            assert anchor in anchors(page.read_text()), (
                f"{path.name} links to a missing heading: {target}#{anchor}"
            )


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_every_page_is_one_click_from_the_readme() -> None:
    """Each page under docs/ is linked from README's "Where to go next"."""
    links = set(
        re.findall(r"\]\((docs/[^)#\s]+)", section(README.read_text(), "## Where to go next"))
    )
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages <= links, sorted(pages - links)
    assert {"docs/wsgi.md", "docs/asgi.md"} <= links


def test_reference_options_table_is_produced_from_the_declarations() -> None:
    # Names, values, defaults, meanings and when a change applies: all from
    # the Settings fields of unicornish/config.py.
    text = REFERENCE.read_text()
    produced = replace_table(text, markdown_table(OPTIONS))
    assert text == produced, (
        "docs/reference.md's options table differs from the declarations in "
        "unicornish/config.py: run `make docs`"
    )


def flags_in(cell: str) -> set[str]:
    """The option names a table cell mentions: `-c, --config FILE` -> -c, --config."""
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", cell))


def test_readme_options_table_agrees_with_the_declarations() -> None:
    text = README.read_text()
    headers = [line for line in text.splitlines() if line.startswith("| option |")]
    if not headers:
        return  # README may leave the whole table to the reference
    columns = [cell.strip() for cell in headers[0].strip().strip("|").split("|")]
    default_at = columns.index("default")
    by_flag = {name: opt for opt in OPTIONS for name in (opt.flag_name, opt.short) if name}
    documented: set[str] = set()
    for row in table_rows(text, "| option |"):
        names = flags_in(row[0])
        assert names, row[0]
        documented |= names
        if names <= {"--version", "--help"}:
            continue
        assert names <= set(by_flag), f"README documents an undeclared option: {row[0]}"
        for name in names:
            shown = row[default_at].strip("`")
            assert shown == by_flag[name].shown_default, f"README's default of {name}"
    for opt in OPTIONS:
        assert opt.flag_name in documented, f"{opt.flag_name} missing from README"


@pytest.mark.parametrize("path", [README, REFERENCE], ids=["README", "reference"])
def test_every_master_signal_is_in_the_signal_table(path: Path) -> None:
    text = path.read_text()
    if path == REFERENCE:
        text = section(text, "### Master")
    names = " ".join(row[0] for row in table_rows(text, "| signal |"))
    for signum in HANDLED_SIGNALS:
        assert signal.Signals(signum).name[3:] in names, signum


def test_the_reference_protocol_table_is_produced_from_the_declared_commands() -> None:
    # Requests, words, what each does and its reply: from unicornish/ctl/commands.py.
    text = REFERENCE.read_text()
    produced = replace_table(text, commands.markdown_table(), commands.TABLE_HEADER)
    assert text == produced, (
        "docs/reference.md's protocol table differs from the declarations in "
        "unicornish/ctl/commands.py: run `make docs`"
    )


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_ctl_synopsis_and_request_table_lists_the_declared_commands(path: Path) -> None:
    """Wherever the docs show `ctl`'s synopsis, or a table of requests and their
    words, it has every command, as declared (README's once lacked metrics and refork)."""
    text = path.read_text()
    for line in text.splitlines():
        if "unicornish ctl [--control PATH] COMMAND [ARG]" in line and "#" in line:
            assert line.split("#", 1)[1].strip() == commands.SYNOPSIS, line
        if line.strip().startswith("COMMAND:"):
            assert line.split(":", 1)[1].strip() == commands.SYNOPSIS, line
    if "| JSON request |" in text:
        rows = [tuple(row[:2]) for row in table_rows(text, "| JSON request |")]
        assert rows == [row[:2] for row in commands.reference_rows()], path.name


def test_the_reference_names_the_commands_answered_while_stopping() -> None:
    text = " ".join(REFERENCE.read_text().split())
    found = re.search(r"any command but (.*?) while the master is stopping", text)
    assert found, "the reference no longer says which commands a stopping master answers"
    named = set(re.findall(r"`([a-z]+)`", found.group(1)))
    assert named == {c.name for c in commands.COMMANDS if c.while_stopping}


def test_the_reference_shows_the_ctl_synopsis() -> None:
    text = section(REFERENCE.read_text(), "## `unicornish status` and `unicornish ctl`")
    assert f"COMMAND: {commands.SYNOPSIS}" in text


def test_every_status_field_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    fields = " ".join(row[0] for row in table_rows(text, "| field |"))
    for name in ("pid", "uptime", "app", "workers_wanted", "workers_running"):
        assert f"`master.{name}`" in fields, name
    for name in ("nr", "age", "state", "tasks", "task_age", "rss", "uss", "cpu"):
        assert f"`{name}`" in fields, name


def test_make_run_transcript_has_the_masters_lines_in_order() -> None:
    text = README.read_text()
    block = text[text.index("    $ make run\n") :].split("\n\n", 1)[0]
    # Log lines show the writer's pid, as the master writes them.
    stamped = [line for line in block.splitlines() if re.match(r"\s*(\^C)?\[", line)]
    assert stamped and all(re.match(r"\s*(\^C)?\[\S+ #\d+\] ", line) for line in stamped), block
    lines = [re.sub(r"^\s*(\^C)?(\[[^]]+\] )?", "", line) for line in block.splitlines()]
    expected = [
        ".venv/bin/unicornish --app examples/testapp.py --workers 2",
        "master process ready pid=",
        "TERM means quick stop (--term quick)",
        "spawning 2 missing workers:",
        "worker[0] spawning..",
        "worker[0] spawned pid=",
        "worker[1] spawning..",
        "worker[1] spawned pid=",
        "INT received: quick stop",
        "master exited",
    ]
    found = [next(i for i, line in enumerate(lines) if line.startswith(e)) for e in expected]
    assert found == sorted(found), block
    assert lines[-1] == "master exited"
    # Each worker is ready only after the master has spawned both.
    for nr in (0, 1):
        ready = lines.index(f"worker[{nr}] ready")
        assert ready > found[expected.index("worker[1] spawned pid=")]


def test_every_master_metric_is_in_the_metrics_table() -> None:
    from unicornish.master.children import Children
    from unicornish.master.deaths import Deaths
    from unicornish.metrics.families import MasterCollector, Metrics, Tallies

    tallies = Tallies()
    no = lambda *args: 0  # noqa: E731
    count = types.SimpleNamespace(wanted=0)
    collector = MasterCollector(Children(), count, no, [], tallies, "x")
    text = Metrics([collector, Deaths()], tallies).text()
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    rows = table_rows((ROOT / "docs" / "metrics.md").read_text(), "| metric | type |")
    documented = {re.sub(r"\{.*", "", row[0].strip("`")): row[1] for row in rows}
    assert served and served <= set(documented), sorted(served - set(documented))
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert documented[name] == kind, name  # the text format: an info is a gauge


# -- what the docs quote from the code: readiness reasons, the worker's attributes --------


def reason_patterns() -> list[re.Pattern[str]]:
    """Every reason not_ready_reason() can give (what /readyz, `status` and
    `status --ready` show), read from its own strings: a number or a K/N
    placeholder stands for each value it formats in."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(readiness.not_ready_reason)))
    patterns = []
    for node in ast.walk(tree):
        value = node.value if isinstance(node, ast.Return) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            patterns.append(re.escape(value.value))
        elif isinstance(value, ast.JoinedStr):
            patterns.append(
                "".join(
                    re.escape(part.value) if isinstance(part, ast.Constant) else r"(?:\d+|[A-Z])"
                    for part in value.values
                )
            )
    assert len(patterns) >= 5, patterns
    return [re.compile(pattern + r"\Z") for pattern in patterns]


# Where the docs list the reasons, and the other words quoted there.
READINESS_PLACES = [
    (
        "docs/metrics.md",
        "| `GET /readyz` |",
        {"GET /readyz", "ready", "not ready: REASON", "status"},
    ),
    ("docs/reference.md", "| `master.not_ready` |", {"--drain", "master.not_ready"}),
    ("docs/control.md", "`not_ready` says why", {"--drain", "scale 0", "not_ready"}),
]


@pytest.mark.parametrize(
    "page, start, others", READINESS_PLACES, ids=[p[0] for p in READINESS_PLACES]
)
def test_readiness_reasons_are_the_ones_served(page: str, start: str, others: set[str]) -> None:
    text = (ROOT / page).read_text()
    place = text[text.index(start) :].split("\n\n", 1)[0]
    if start.startswith("|"):
        place = place.split("\n", 1)[0]  # one table row
    quoted = set(re.findall(r"`([^`]+)`", place)) - others
    patterns = reason_patterns()
    for pattern in patterns:
        assert any(pattern.match(word) for word in quoted), f"{page} omits {pattern.pattern}"
    for word in quoted:
        assert any(p.match(word) for p in patterns), f"{page}: {word!r} is not a reason served"


# Public names of Worker that worker kinds use (the kind seam), not the app's API.
FOR_KINDS = {
    "board", "become_mold", "check_master", "drain_wake", "forget", "install_signals",
    "kind", "quitting", "refork_at", "report", "run", "sibling", "stopping", "task_done",
    "task_start", "task_started", "wait_for_slot", "wake_fd", "app_name", "turn",
    "settings",
}  # fmt: skip


def worker_api() -> set[str]:
    """The `worker` an app gets: Worker's public attributes and methods."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Worker)))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return {name for name in names if not name.startswith("_")} - FOR_KINDS


def test_every_worker_attribute_is_documented_and_no_other() -> None:
    api = worker_api()
    assert {"nr", "accept", "idle", "app", "max_tasks", "metrics"} <= api
    rows = table_rows(REFERENCE.read_text(), "| attribute or method |")
    in_reference = {re.sub(r"\(.*", "", row[0].strip("`")) for row in rows}
    assert in_reference == api, (sorted(api - in_reference), sorted(in_reference - api))
    app_page = (ROOT / "docs" / "app.md").read_text()
    listed = app_page[app_page.index("`worker` has") :].split("\n\n", 2)[1]
    bullets = re.findall(r"^- (.+?):", listed, re.M)
    in_app_page = {re.sub(r"\(.*", "", n.strip("`")) for b in bullets for n in b.split(", ")}
    assert in_app_page == api, (sorted(api - in_app_page), sorted(in_app_page - api))
