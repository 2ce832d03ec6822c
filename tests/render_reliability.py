"""Render the measured sections of docs/RELIABILITY.md from docs/reliability/*.json.

The JSON files are written by the suites themselves under `make soak`
(tests/chaos): the chaos runs, the leak checks and the bad-input cases. This
script only turns them into tables between `<!-- BEGIN name -->` and
`<!-- END name -->` markers; the prose around them is left alone.

    .venv/bin/python tests/render_reliability.py      # re-render from the JSON
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "reliability"
DOC = ROOT / "docs" / "RELIABILITY.md"


def mib(value: int) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


def meta_line(data: dict[str, Any]) -> str:
    meta = data.get("_meta", {})
    if not meta:
        return ""
    return (
        f"_Recorded {meta.get('recorded_at', '?')} by `{meta.get('command', '?')}` "
        f"at commit {meta.get('commit', '?')}, on {meta.get('machine', '?')}._\n\n"
    )


def chaos(data: dict[str, Any]) -> str:
    rows = [
        "| scenario | seconds | workers | kills | signals (TTIN/TTOU/HUP/USR1/WINCH) | respawns "
        "| requests | failed (killed mid-request / before hello / unexplained) "
        "| fds before→after | RSS before→after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("plain", "preload", "listener"):
        r = data.get(name)
        if not r:
            continue
        s = r["signals"]
        sigs = "/".join(str(s[k]) for k in ("TTIN", "TTOU", "HUP", "USR1", "WINCH"))
        if "requests" in r:
            requests = str(r["requests"])
            failed = (
                f"{r['failed']} ({r['failed_killed_mid_request']} / "
                f"{r['failed_before_hello']} / {r['failed_unexplained']})"
            )
        else:
            requests = failed = "-"
        label = name + (" (--preload)" if r.get("preload") else "")
        rows.append(
            f"| {label} | {r['seconds']} | {r['workers']} | {r['kills']} | {sigs} "
            f"| {r['respawns']} | {requests} | {failed} | {r['fds_before']}→{r['fds_after']} "
            f"| {mib(r['rss_before'])}→{mib(r['rss_after'])} |"
        )
    extra = [
        f"\nIn the {name} run, {r['control_requests']} control-socket `status` replies "
        f"(plus malformed requests, all refused) and {r['notify_messages']} sd_notify "
        "messages received by the test's NOTIFY_SOCKET, none lost to an error.\n"
        for name, r in sorted(data.items())
        if isinstance(r, dict) and "control_requests" in r
    ]
    return meta_line(data) + "\n".join(rows) + "\n" + "".join(extra)


def leaks(data: dict[str, Any]) -> str:
    rows = [
        "| check | count | seconds | master fds before→after | master RSS before→after |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("respawns-plain", "respawns (SIGKILL of every worker, repeated)"),
        ("respawns-preload", "respawns, --preload"),
        ("usr2-rollback", "USR2, then QUIT of the new master (old one carries on)"),
        ("usr2-upgrade", "USR2, then QUIT of the old master (generation 1 → 11)"),
    ):
        r = data.get(key)
        if not r:
            continue
        count = r.get("respawns", r.get("cycles"))
        fds = f"{r.get('fds_before', r.get('fds_first'))}→{r.get('fds_after', r.get('fds_last'))}"
        rss_a = r.get("rss_before", r.get("rss_first", 0))
        rss_b = r.get("rss_after", r.get("rss_last", 0))
        rows.append(f"| {label} | {count} | {r['seconds']} | {fds} | {mib(rss_a)}→{mib(rss_b)} |")
    return meta_line(data) + "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def bad_input(data: dict[str, Any]) -> str:
    rows = [
        "| # | where | input | result | what the user sees | as expected |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in enumerate(data.get("cases", []), 1):
        line = row["line"]
        rows.append(
            f"| {n} | {row['group']} | {_cell(row['given'])} | {row['result']} "
            f"| `{_cell(line)}` | {'yes' if row['ok'] == 'True' else '**NO**'} |"
        )
    return meta_line(data) + "\n".join(rows) + "\n"


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "chaos": chaos,
    "leaks": leaks,
    "bad-input": bad_input,
}


def render(doc: Path = DOC) -> None:
    text = doc.read_text()
    for name, make in SECTIONS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        block = make(json.loads(path.read_text()))
        pattern = re.compile(
            rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S
        )
        if not pattern.search(text):
            raise SystemExit(f"{doc}: no <!-- BEGIN {name} --> ... <!-- END {name} --> markers")
        text = pattern.sub(lambda m, b=block: m.group(1) + b + m.group(2), text)
    doc.write_text(text)


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else DOC)
