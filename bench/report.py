"""The outputs of a bench run: the table (text and markdown), latest.json, respawn.png."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from scenarios import Row

COLUMNS = ("unicornish", "gunicorn", "unicorn")


def fmt(v: object, unit: str = "") -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        if math.isinf(v):
            return "never"
        if math.isnan(v):
            return "-"
        a = abs(v)
        if a >= 100_000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        if a == 0:
            return "0"
        return f"{v:.3f}"
    return str(v)


def ratio_text(row: Row) -> str:
    r = row.ratio()
    if r is None:
        return "-"
    if r == 1.0 and row.values.get("unicornish") == 0:
        return "both 0"
    if math.isinf(r) or math.isnan(r):
        return "-"
    text = f"{r:.2f}x" if r < 100 else f"{r:.0f}x"
    return text + (f" vs {row.baseline}" if row.baseline else "")


def met_text(row: Row) -> str:
    if not row.target:
        return ""
    if row.met is None:
        return "? " + row.target
    return ("yes " if row.met else "NO ") + row.target


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        metric = r.metric + (f" ({r.unit})" if r.unit and r.unit != "/s" else "")
        cells = [r.scenario, metric]
        for c in COLUMNS:
            cells.append(fmt(r.values.get(c, "-"), r.unit))
        cells.append(ratio_text(r))
        cells.append(met_text(r))
        out.append(cells)
    return out


HEADER = ["scenario", "metric", "unicornish", "gunicorn", "unicorn", "ratio", "target met?"]


def text_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    # Long "n/a: reason" cells are shortened in the text table; the JSON keeps them whole.
    for cells in body:
        for i in (2, 3, 4):
            if len(cells[i]) > 24:
                cells[i] = cells[i][:23] + "~"
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(HEADER)]
    lines = []
    sep = "  "
    lines.append(sep.join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    lines.append(sep.join("-" * w for w in widths))
    last = None
    for cells in body:
        if last is not None and cells[0] != last:
            lines.append("")
        shown = list(cells)
        if cells[0] == last:
            shown[0] = ""
        last = cells[0]
        lines.append(sep.join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip())
    notes = list(dict.fromkeys(f"  {r.scenario}: {r.note}" for r in rows if r.note))
    if notes:
        lines.append("")
        lines.append("notes:")
        lines += notes
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    last = None
    for cells in body:
        shown = list(cells)
        if cells[0] == last:
            shown[0] = ""
        last = cells[0]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in shown) + " |")
    return "\n".join(lines)


def _clean(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str, meta: dict[str, Any], rows: list[Row], raw: dict[str, Any]) -> None:
    doc = {
        "meta": meta,
        "table": [
            {
                "scenario": r.scenario,
                "metric": r.metric,
                "unit": r.unit,
                "better": r.better,
                "values": r.values,
                "ratio": r.ratio(),
                "ratio_vs": r.baseline or "better peer",
                "target": r.target or None,
                "met": r.met,
                "note": r.note or None,
            }
            for r in rows
        ],
        "raw": raw,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(doc), f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def plot_respawn(path: str, raw: dict[str, Any], title: str) -> str | None:
    """ECDF of respawn latencies, one panel per preload mode, one line per peer."""
    data = raw.get("respawn") or {}
    if not data:
        return "no respawn data"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib not installed"
    colors = {"unicornish": "#c2185b", "gunicorn": "#2e7d32", "unicorn": "#1565c0"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, label in zip(axes, ("no preload", "preload"), strict=True):
        per = data.get(label) or {}
        for peer in COLUMNS:
            v = per.get(peer)
            if not isinstance(v, dict) or not v.get("samples_s"):
                ax.plot([], [], " ", label=f"{peer}: {v if isinstance(v, str) else 'no data'}")
                continue
            xs = sorted(x * 1000 for x in v["samples_s"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(
                xs,
                ys,
                where="post",
                color=colors[peer],
                label=f"{peer}: p50 {v['p50'] * 1000:.1f} ms, p90 {v['p90'] * 1000:.1f} ms",
            )
            ax.axvline(v["p50"] * 1000, color=colors[peer], lw=0.8, ls=":")
        spare = (data.get(f"{label}, --spares 1") or {}).get("unicornish")
        if isinstance(spare, dict) and spare.get("samples_s"):
            xs = sorted(x * 1000 for x in spare["samples_s"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(
                xs,
                ys,
                where="post",
                color=colors["unicornish"],
                ls="--",
                label=f"unicornish --spares 1: p50 {spare['p50'] * 1000:.1f} ms, "
                f"p90 {spare['p90'] * 1000:.1f} ms",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"respawn latency, {label}")
        ax.set_xlabel("SIGKILL to replacement ready (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("fraction of respawns")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
