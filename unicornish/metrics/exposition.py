"""The text of the master's own metric families, in both formats /metrics speaks.

prometheus_client renders any collector, but with 256 workers its OpenMetrics
writer spent ~15 ms of the master's loop per scrape checking every character
of every label value, and its text writer ~8 ms building each sample from a
dict of labels. The master's own families (1000+ per-worker samples with 256
workers) are written here instead: a sample is rendered once into one line,
the same in both formats (`name{labels} value`), and the label text of a
series whose labels never change (`{nr="17"}`) is built once per process.
Only the HELP/TYPE lines differ between the formats, and OpenMetrics ends
with `# EOF`. Every family /metrics serves is written here (the master's,
the apps' metrics, the deaths by cause): prometheus_client is not needed to
serve, and stays only as a test oracle (its parsers read our output back).

A scrape must never fail as a whole for one bad value: `write` encodes the
whole text at once and, only when that fails (a lone surrogate, from
os.fsdecode() say), encodes series by series and leaves out those that
cannot be written, reporting how many.

The rules kept here (both checked by promtool and by a real Prometheus in
tests/test_metrics.py):
* label values escape `\\`, `"` and a newline as `\\\\`, `\\"` and `\\n`;
  HELP text escapes `\\` and a newline, and in OpenMetrics `"` too;
* a counter family `x` has the sample `x_total`; the text format names the
  family `x_total` in HELP/TYPE, OpenMetrics names it `x`. No `_created`
  samples: a counter's creation time is optional in OpenMetrics, and the
  master's counters start with the master (unicornish_master_start_time_seconds);
* an info family `x` has the sample `x_info` with the value 1; the text
  format, which has no info type, calls it the gauge `x_info`;
* a histogram has cumulative `_bucket{le=...}` samples ending with
  `le="+Inf"`, then `_count` (the +Inf bucket) and `_sum`;
* values are written as prometheus_client writes them (Go's float format:
  `2.0`, `1.5e+09`, `+Inf`, `NaN`), so a scraper sees the same text as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

GAUGE, COUNTER, INFO, HISTOGRAM = "gauge", "counter", "info", "histogram"
EOF = "# EOF\n"


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


@lru_cache(maxsize=8192)
def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """`{a="x",b="y"}`, or "" without labels. Cached: the master's series keep
    their labels (a slot number, a listener's address) scrape after scrape."""
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


def number(value: float) -> str:
    """A sample value as Go (and so prometheus_client) writes a float64: Python's
    repr, but with an exponent from 1e6 on, where Python waits until 1e16."""
    if value.__class__ is int:
        # Most samples: counts, and bytes of memory (1e6 and up). Below 2**53 a
        # float holds every integer, so its shortest digits are the integer's.
        if -1000000 < value < 1000000:
            return f"{value}.0"
        if 0 < value < 9007199254740992:
            text = str(value)
            digits = text.rstrip("0")
            mantissa = digits[0] + "." + digits[1:] if len(digits) > 1 else digits
            return f"{mantissa}e+{len(text) - 1:02d}"
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    if -1e6 < value < 1e6 or "e" in text:
        return text
    sign = "-" if value < 0 else ""
    whole, _, fraction = text.lstrip("-").partition(".")
    digits = (whole + fraction).rstrip("0")
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e+{len(whole) - 1:02d}"


class Family:
    """One metric family: name, type, help, and its series as finished text
    (one element per series: one line, or a histogram's buckets, count and sum)."""

    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name  # without _total (counter) or _info (info)
        self.kind = kind
        self.help = help
        self.lines: list[str] = []

    def add(
        self,
        value: float,
        labelnames: tuple[str, ...] = (),
        labelvalues: tuple[str, ...] = (),
    ) -> None:
        """One sample of a gauge, counter (`_total`) or info (`_info`) family."""
        self.add_line(self.sample_name(), label_text(labelnames, labelvalues), value)

    def add_line(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{labels} {number(value)}\n")

    def sample_name(self) -> str:
        if self.kind == COUNTER:
            return self.name + "_total"
        if self.kind == INFO:
            return self.name + "_info"
        return self.name

    def add_histogram(
        self,
        bounds: Sequence[float],
        counts: Sequence[float],
        total: float,
        labelnames: tuple[str, ...] = (),
        labelvalues: tuple[str, ...] = (),
    ) -> None:
        """`counts`: one per bucket, +Inf last, not cumulative (as workers store them)."""
        les = [*(number(b) for b in bounds), "+Inf"]
        names = (*labelnames, "le")
        bucket, lines, running = self.name + "_bucket", [], 0.0
        for le, count in zip(les, counts, strict=True):
            running += count
            lines.append(f"{bucket}{label_text(names, (*labelvalues, le))} {number(running)}\n")
        labels = label_text(labelnames, labelvalues)
        lines.append(f"{self.name}_count{labels} {number(running)}\n")
        lines.append(f"{self.name}_sum{labels} {number(total)}\n")
        self.lines.append("".join(lines))

    def header(self, openmetrics: bool) -> str:
        name, kind = self.name, self.kind
        if not openmetrics:
            if kind == COUNTER:
                name += "_total"
            elif kind == INFO:
                name, kind = name + "_info", GAUGE
        return f"# HELP {name} {escape_help(self.help, openmetrics)}\n# TYPE {name} {kind}\n"


class Written(NamedTuple):
    body: bytes
    dropped: int  # series left out: their text (or their family's HELP) cannot be encoded
    example: str  # the first family with something left out, for the log ("" if none)


def write(families: Iterable[Family], openmetrics: bool) -> Written:
    """The families in one format, as UTF-8, without the OpenMetrics `# EOF`
    (the caller adds it last)."""
    families = list(families)
    parts: list[str] = []
    for family in families:
        parts.append(family.header(openmetrics))
        parts.extend(family.lines)
    try:
        return Written("".join(parts).encode(), 0, "")
    except UnicodeEncodeError:
        return _write_what_can_be(families, openmetrics)


def _write_what_can_be(families: list[Family], openmetrics: bool) -> Written:
    """The slow way, only after the fast one failed: series by series, leaving
    out each one (or each family, for its HELP text) that cannot be encoded."""
    parts: list[bytes] = []
    dropped, example = 0, ""
    for family in families:
        try:
            parts.append(family.header(openmetrics).encode())
        except UnicodeEncodeError:
            dropped += len(family.lines)
            example = example or family.name
            continue
        for text in family.lines:
            try:
                parts.append(text.encode())
            except UnicodeEncodeError:
                dropped += 1
                example = example or family.name
    return Written(b"".join(parts), dropped, example)
