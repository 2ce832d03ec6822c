"""The outputs of a bench run: the table (text and markdown), latest.json, respawn.png."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from scenarios import Row

# uvicorn: scenario 14's peer (--asgi); "-" in the other scenarios' rows.
COLUMNS = ("unicornish", "gunicorn", "unicorn", "uvicorn")


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


HEADER = ["scenario", "metric", *COLUMNS, "ratio", "target met?"]


def text_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    # Long "n/a: reason" cells are shortened in the text table; the JSON keeps them whole.
    for cells in body:
        for i in range(2, 2 + len(COLUMNS)):
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


def plot_scale(path: str, raw: dict[str, Any], title: str) -> str | None:
    """Cost against the number of workers (log-log), one panel per figure, one line per peer."""
    figs = raw.get("scale_figures") or {}
    if not figs:
        return "no scale data"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    from scale import FIGURES

    panels = [
        ("cold_per_worker_ms", "cold start per worker (ms)"),
        ("respawn_cpu_ms", "master CPU per respawn (ms)"),
        ("respawn_p50_ms", "respawn latency p50 (ms)"),
        ("idle_cpu_ms_s", "idle master CPU (ms per s)"),
        ("timeout_respawn_cpu_ms", "CPU per respawn, --timeout 30 (ms)"),
        ("status_per_worker_us", "status latency per worker (us)"),
        ("rss_mib", "master RSS (MiB)"),
    ]
    assert {k for k, _ in panels} <= {k for k, _l, _u in FIGURES}
    colors = {"unicornish": "#c2185b", "gunicorn": "#2e7d32", "unicorn": "#1565c0"}
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.8))
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for peer in COLUMNS:
            per = figs.get(peer) or {}
            pts = sorted(
                (int(n), v[key])
                for n, v in per.items()
                if isinstance(v, dict) and isinstance(v.get(key), (int, float))
            )
            if not pts:
                continue
            # A zero cannot sit on a log axis: drawn at the floor, marked hollow.
            floor = 1e-3
            xs = [n for n, _ in pts]
            ys = [max(v, floor) for _, v in pts]
            ax.plot(xs, ys, "o-", color=colors[peer], label=peer, ms=4)
            failed = [n for n, v in per.items() if isinstance(v, str)]
            for n in failed:
                ax.annotate("x", (int(n), ys[-1]), color=colors[peer], ha="center")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("workers (N)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=8)
    last = axes.flat[len(panels)]
    last.axis("off")
    notes = []
    for peer in COLUMNS:
        for n, v in sorted((figs.get(peer) or {}).items(), key=lambda kv: int(kv[0])):
            if isinstance(v, str):
                notes.append(f"{peer} N={n}: {v}")
    last.text(0, 1, "\n".join(notes[:12]) or "every peer ran at every N", va="top", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
