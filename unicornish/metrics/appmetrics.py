"""App metrics: counters, gauges and histograms a worker updates with no system call.

The usual way to get metrics out of a prefork server (prometheus_client's
multiprocess mode) has every worker write files that a scraper globs and
merges; the files of dead workers pile up and must be cleaned by hand. Here
the master already owns each worker's lifetime, so it does the bookkeeping:

* Before each fork the master maps an `Arena` (anonymous shared memory, like
  the scoreboard's page) for the new process. The worker writes into it; the
  master only reads it.
* The app declares its metrics (`worker.metrics.counter(...)`, or
  `appmetrics.counter(...)` at import time). Each declaration appends one
  self-describing record (name, type, help, label names, every series' label
  values, histogram buckets, first value slot) to the arena's schema area,
  then bumps a generation number: the master re-parses the schema only when
  that number changed, and only the new records (declarations only append).
* An increment is a float64 read-add-store into the arena's value area: no
  system call, no lock. One process writes an arena (single writer); a worker
  that updates metrics from several threads must guard the updates itself.
* The master (unicornish.metrics.appcollector) sums every live worker's
  arena at scrape time. When a worker is reaped its counters and histograms
  are folded into retired totals, so they stay monotonic across deaths,
  recycles and reloads; gauges sum live workers only.

What the app can get wrong is refused where it does it, with a MetricsError
(a name, a label or a help text that cannot be exposed, a name whose exposed
samples would clash with another's, a counter increment that is not a
number >= 0). The arena is the worker's own memory, which the app can write
anything into: the master checks what it reads (Decl.parse, Schema) with the
same rules, and never trusts it.

Label sets are fixed when a metric is declared (`labels={"kind": ["a", "b"]}`
preallocates every combination), so an update never allocates a slot. A
worker has at most MAX_SERIES series and MAX_SLOTS value slots.

With --preload (or declarations in the config file) the declarations run in
the master, before any arena exists: they are kept in a private buffer and
replayed, with their values, into each worker's own arena right after fork.

Arena layout (native order):
    0      uint32   magic
    4      uint32   layout version
    8      uint64   generation: bumped after each appended schema record
    16     uint32   schema bytes used
    20     uint32   value slots used
    4096   schema: one JSON object per line, appended
    65536  float64 value slots
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import mmap
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

MAX_SERIES = 512
MAX_SLOTS = 4096
MAX_BUCKETS = 64
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Names the master's own metrics use: an app cannot take them.
RESERVED_PREFIX = "unicornish_"
# The worker kinds' own metrics (--asgi), declared in a worker's arena like an
# app's: the only names under the prefix the master reads from an arena.
BUILTIN_METRICS = frozenset(
    {
        "unicornish_http_requests",
        "unicornish_http_requests_in_flight",
        "unicornish_websockets_open",
        # --wsgi's own (worker/wsgi.py)
        "unicornish_http_request_duration_seconds",
        "unicornish_http_requests_refused",
        "unicornish_http_received_bytes",
        "unicornish_http_sent_bytes",
        "unicornish_http_connections",
    }
)

_MAGIC = 0x4D414E55  # "UNAM"
_LAYOUT = 1
_SCHEMA_AT = 4096
_VALUES_AT = 65536
SCHEMA_BYTES = _VALUES_AT - _SCHEMA_AT
ARENA_SIZE = _VALUES_AT + MAX_SLOTS * 8

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
_INF = math.inf
_TYPES = (COUNTER, GAUGE, HISTOGRAM)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# The sample and family names a metric's exposition uses, by type, besides its
# own name: two metrics must not share any (OpenMetrics reserves `_created`).
_SUFFIXES = {
    COUNTER: ("_total", "_created"),
    GAUGE: (),
    HISTOGRAM: ("_bucket", "_count", "_sum", "_created"),
}


class MetricsError(ValueError):
    """A declaration or an update the app got wrong: said in one line."""


# -- the shared memory ----------------------------------------------------------------


class Arena:
    """One process's metrics page set: written by that process, read by the master."""

    __slots__ = (
        "_map",
        "_views",
        "magic",
        "generation",
        "lengths",
        "schema",
        "values",
        "seen_generation",
        "parsed_to",
        "parsed",
        "decls",
        "checked",
        "bad",
        "reported",
    )

    def __init__(self, fd: int = -1) -> None:
        # fd: a memfd of ARENA_SIZE bytes, for a worker forked by a mold.
        flags = mmap.MAP_SHARED if fd >= 0 else mmap.MAP_SHARED | mmap.MAP_ANONYMOUS
        self._map = mmap.mmap(fd, ARENA_SIZE, flags=flags)
        view = memoryview(self._map)
        self.magic = view[0:8].cast("I")  # magic, layout
        self.generation = view[8:16].cast("Q")
        self.lengths = view[16:24].cast("I")  # schema bytes used, value slots used
        self.schema = view[_SCHEMA_AT:_VALUES_AT]
        self.values = view[_VALUES_AT:ARENA_SIZE].cast("d")
        self._views = (self.magic, self.generation, self.lengths, self.schema, self.values, view)
        # The master's parse cache: the generation it parsed, up to where, and what.
        self.seen_generation = 0
        self.parsed_to = 0
        self.parsed = b""  # the records parsed: workers of one app have the same
        self.decls: list[Decl] = []
        self.checked = Schema()
        self.bad = ""  # why its declarations were refused: none is read from then on
        self.reported = False  # the master logged `bad`

    def keep_from_children(self) -> None:
        """As Scoreboard.keep_from_children: no later child maps this arena."""
        try:
            self._map.madvise(mmap.MADV_DONTFORK)
        except (AttributeError, OSError):
            pass

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._map.close()

    # -- the master's side --

    def declarations(self) -> list[Decl]:
        """What the worker declared; parsed again only when its generation moved.

        The worker is app code and may scribble over its arena: its records are
        checked by the rules a declaration follows (Decl.parse, Schema), and the
        first one that breaks one makes the whole arena `bad`: none of its
        series is read from then on, since none of them can be trusted."""
        if self.bad:
            return []
        generation = int(self.generation[0])
        if generation == self.seen_generation or self.magic[0] != _MAGIC:
            return self.decls
        end = min(int(self.lengths[0]), SCHEMA_BYTES)
        if end > self.parsed_to:
            chunk = bytes(self.schema[self.parsed_to : end])
            complete = chunk.rfind(b"\n") + 1
            try:
                for line in chunk[:complete].splitlines():
                    decl = Decl.parse(line)
                    self.checked.add(decl)
                    self.decls.append(decl)
            except MetricsError as exc:
                self.bad = str(exc)
                self.decls = []
                return []
            self.parsed_to += complete
            self.parsed += chunk[:complete]
        self.seen_generation = generation
        return self.decls

    def snapshot(self) -> list[float]:
        used = min(int(self.lengths[1]), MAX_SLOTS)
        return cast("list[float]", self.values[:used].tolist())

    # -- the worker's side --

    def append(self, record: bytes, slots: int) -> None:
        used = int(self.lengths[0])
        if used + len(record) > SCHEMA_BYTES:
            raise MetricsError(
                f"no room left for metric declarations ({SCHEMA_BYTES} bytes per worker)"
            )
        self.schema[used : used + len(record)] = record
        # Record first, then its length, then the generation: the master never
        # reads past a length that covers a half-written record.
        self.lengths[1] = slots
        self.lengths[0] = used + len(record)
        self.generation[0] += 1


@dataclass(frozen=True)
class Decl:
    """One metric as declared: its shape, its series and where their values are."""

    name: str
    kind: str
    help: str
    labelnames: tuple[str, ...]
    series: tuple[tuple[str, ...], ...]
    buckets: tuple[float, ...]
    offset: int

    @property
    def width(self) -> int:
        """Value slots per series: one, or per bucket (+Inf too) and the sum."""
        return len(self.buckets) + 2 if self.kind == HISTOGRAM else 1

    @property
    def end(self) -> int:
        return self.offset + self.width * len(self.series)

    @cached_property
    def shape(self) -> tuple[str, str, tuple[str, ...], tuple[float, ...]]:
        # Cached: a scrape asks every worker's every declaration for it.
        return (self.name, self.kind, self.labelnames, self.buckets)

    def record(self) -> bytes:
        fields = {
            "n": self.name,
            "t": self.kind,
            "h": self.help,
            "l": list(self.labelnames),
            "s": [list(values) for values in self.series],
            "b": list(self.buckets),
            "o": self.offset,
        }
        return json.dumps(fields, separators=(",", ":")).encode() + b"\n"

    @staticmethod
    def parse(line: bytes) -> Decl:
        """A record read from an arena, checked by the rules a declaration follows
        (untrusted: the app can write anything there). Raises MetricsError."""
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError):
            raise MetricsError("a declaration record is not JSON") from None
        if not isinstance(raw, dict) or set(raw) != {"n", "t", "h", "l", "s", "b", "o"}:
            raise MetricsError("a declaration record has other fields than a declaration's")
        name, kind = raw["n"], raw["t"]
        if kind not in _TYPES:
            raise MetricsError(f"metric {name!r}: unknown type {kind!r}")
        name = _check_name(name, builtin=True)
        where = f"metric {name}"
        help = _check_text(raw["h"], f"{where}: help")
        labelnames, series = raw["l"], raw["s"]
        if not _strings(labelnames) or not isinstance(series, list):
            raise MetricsError(f"{where}: label names or series of the wrong type")
        for label in labelnames:
            _check_label_name(label, kind)
        if len(set(labelnames)) != len(labelnames):
            raise MetricsError(f"{where}: a label name is given twice")
        if not labelnames and series != [[]]:
            raise MetricsError(f"{where}: without labels, it has one series")
        if not 0 < len(series) <= MAX_SERIES:
            raise MetricsError(f"{where}: {len(series)} series")
        for values in series:
            if not _strings(values) or len(values) != len(labelnames):
                raise MetricsError(f"{where}: a series without a value for each label")
            for value in values:
                _check_text(value, f"{where}: label value")
        if len({tuple(values) for values in series}) != len(series):
            raise MetricsError(f"{where}: a series is given twice")
        buckets, offset = raw["b"], raw["o"]
        if not isinstance(buckets, list) or not all(_is_number(b) for b in buckets):
            raise MetricsError(f"{where}: buckets of the wrong type")
        if kind == HISTOGRAM:
            bounds = _check_buckets(buckets)
            if len(bounds) != len(buckets):
                raise MetricsError(f"{where}: +Inf among the buckets")
        elif buckets:
            raise MetricsError(f"{where}: buckets on a {kind}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise MetricsError(f"{where}: a bad value slot {offset!r}")
        return Decl(
            name,
            kind,
            help,
            tuple(labelnames),
            tuple(tuple(values) for values in series),
            tuple(float(b) for b in buckets),
            offset,
        )


def _strings(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(item, str) for item in items)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exposed_names(name: str, kind: str) -> tuple[str, ...]:
    """Every name a metric's exposition uses (its family and sample names)."""
    return (name, *(name + suffix for suffix in _SUFFIXES[kind]))


class Schema:
    """The rules between one process's declarations: each name once, no two
    metrics whose exposed names clash (`counter("x")` and `gauge("x_total")`),
    at most MAX_SERIES series and MAX_SLOTS value slots. Kept by a Registry
    as it declares, and by the master for each arena it reads."""

    __slots__ = ("names", "taken", "series")

    def __init__(self) -> None:
        self.names: dict[str, Decl] = {}
        self.taken: dict[str, Decl] = {}  # an exposed name -> the metric using it
        self.series = 0

    def check(self, decl: Decl) -> None:
        """Raises MetricsError when `decl` does not fit beside those added."""
        name = decl.name
        if name in self.names:
            raise MetricsError(f"metric {name} is declared twice")
        for exposed in exposed_names(name, decl.kind):
            other = self.taken.get(exposed)
            if other is not None:
                raise MetricsError(
                    f"metric {name} ({decl.kind}) clashes with the {other.kind} {other.name}: "
                    f"both would be exposed as {exposed}"
                )
        if self.series + len(decl.series) > MAX_SERIES:
            raise MetricsError(
                f"metric {name}: {len(decl.series)} more series would pass the limit of "
                f"{MAX_SERIES} series per worker ({self.series} declared)"
            )
        if decl.end > MAX_SLOTS:
            raise MetricsError(
                f"metric {name}: needs {decl.end - decl.offset} value slots, "
                f"{max(0, MAX_SLOTS - decl.offset)} are left of {MAX_SLOTS} per worker"
            )

    def add(self, decl: Decl) -> None:
        self.check(decl)
        self.names[decl.name] = decl
        for exposed in exposed_names(decl.name, decl.kind):
            self.taken[exposed] = decl
        self.series += len(decl.series)


# -- the app's side: declaring and updating ---------------------------------------------


class _Series:
    """One label combination's value slots. `_values` is the arena's (or, before a
    worker exists, a private buffer's) float64 view: an update is a plain store."""

    __slots__ = ("_values", "_i")

    def __init__(self, values: memoryview[float], index: int) -> None:
        self._values = values
        self._i = index


def _bad_increment(amount: Any) -> MetricsError:
    return MetricsError(f"a counter only goes up: inc() needs a finite number >= 0, got {amount!r}")


def _not_a_number(method: str, value: Any) -> MetricsError:
    return MetricsError(f"{method}() needs a number, got {value!r}")


class CounterSeries(_Series):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        # NaN and +Inf would stay in the counter for good: refused with the rest.
        try:
            if 0 <= amount < _INF:
                self._values[self._i] += amount
                return
        except (TypeError, OverflowError):
            pass
        raise _bad_increment(amount)

    def get(self) -> float:
        return float(self._values[self._i])


class _GaugeUpdates:
    """A gauge's updates, for a series and for an unlabelled Gauge alike: each
    one store into the slot `_values[_i]` (a Gauge with labels raises there)."""

    __slots__ = ()
    _values: Any
    _i: int

    def inc(self, amount: float = 1.0) -> None:
        try:
            self._values[self._i] += amount
        except (TypeError, OverflowError):
            raise _not_a_number("inc", amount) from None

    def dec(self, amount: float = 1.0) -> None:
        try:
            self._values[self._i] -= amount
        except (TypeError, OverflowError):
            raise _not_a_number("dec", amount) from None

    def set(self, value: float) -> None:
        try:
            self._values[self._i] = value
        except (TypeError, OverflowError):
            raise _not_a_number("set", value) from None


class GaugeSeries(_Series, _GaugeUpdates):
    __slots__ = ()

    def get(self) -> float:
        return float(self._values[self._i])


class HistogramSeries(_Series):
    __slots__ = ("_bounds",)

    def __init__(self, values: memoryview[float], index: int, bounds: tuple[float, ...]) -> None:
        super().__init__(values, index)
        self._bounds = bounds

    def observe(self, value: float) -> None:
        # Buckets are stored one count each (not cumulative): two stores per
        # observation; the master adds them up at scrape time. `le` is inclusive.
        # The sum is computed first: what is not a number changes nothing, and
        # NaN, which would stay in the sum for good, is refused.
        values, base, bounds = self._values, self._i, self._bounds
        at_sum = base + len(bounds) + 1
        try:
            total = values[at_sum] + value
            if value != value:
                raise ValueError
            bucket = base + bisect.bisect_left(bounds, value)
        except (TypeError, ValueError, OverflowError):
            raise MetricsError(f"observe() needs a number other than NaN, got {value!r}") from None
        values[bucket] += 1.0
        values[at_sum] = total

    def get(self) -> tuple[list[float], float]:
        """(the count of each bucket, +Inf last, not cumulative; the sum)."""
        n = len(self._bounds) + 1
        counts = [float(self._values[self._i + k]) for k in range(n)]
        return counts, float(self._values[self._i + n])


class _NeedsLabels:
    """The value slots of a metric with labels, as its own update methods see them:
    any use raises. So an unlabelled metric's `inc()` is one store, with no test
    for labels on the way (an app may call it a million times a second)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, index: int) -> float:
        raise MetricsError(f"metric {self.name} has labels: use .labels(...) first")

    def __setitem__(self, index: int, value: float) -> None:
        self.__getitem__(index)


class Metric:
    """A declared metric. Without labels it is its own only series (`inc`, `set`,
    `observe`...); with labels, `labels(...)` gives the series to update."""

    # Slots, and the only series' view and index copied here: the update methods
    # below store into `_values` directly instead of going through the series.
    __slots__ = ("decl", "_series", "_only", "_values", "_i")

    def __init__(self, decl: Decl, series: dict[tuple[str, ...], _Series]) -> None:
        self.decl = decl
        self._series = series
        self._only = series.get(()) if not decl.labelnames else None
        self._values: memoryview[float] | _NeedsLabels = _NeedsLabels(decl.name)
        self._i = 0
        if self._only is not None:
            self._values = self._only._values
            self._i = self._only._i

    @property
    def name(self) -> str:
        return self.decl.name

    def labels(self, *values: Any, **by_name: Any) -> Any:
        names = self.decl.labelnames
        if not names:
            raise MetricsError(f"metric {self.decl.name} has no labels")
        if values and by_name:
            raise MetricsError("labels(): give the values by position or by name, not both")
        if by_name:
            if set(by_name) != set(names):
                raise MetricsError(
                    f"metric {self.decl.name} has labels {list(names)}, got {sorted(by_name)}"
                )
            values = tuple(by_name[n] for n in names)
        if len(values) != len(names):
            raise MetricsError(
                f"metric {self.decl.name} has labels {list(names)}, got {len(values)} values"
            )
        key = tuple(str(v) for v in values)
        found = self._series.get(key)
        if found is None:
            raise MetricsError(
                f"metric {self.decl.name}: {dict(zip(names, key, strict=True))} was not declared "
                "(label values are fixed when the metric is declared)"
            )
        return found

    def _single(self) -> Any:
        if self._only is None:
            raise MetricsError(f"metric {self.decl.name} has labels: use .labels(...) first")
        return self._only

    def __repr__(self) -> str:
        return f"<{self.decl.kind} {self.decl.name}>"


class Counter(Metric):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        try:
            if 0 <= amount < _INF:
                self._values[self._i] += amount
                return
        except (TypeError, OverflowError):
            pass
        self._single()  # a metric with labels says so first
        raise _bad_increment(amount)

    def get(self) -> float:
        return float(self._single().get())


class Gauge(Metric, _GaugeUpdates):
    __slots__ = ()

    def get(self) -> float:
        return float(self._single().get())


class Histogram(Metric):
    __slots__ = ()

    def observe(self, value: float) -> None:
        self._single().observe(value)

    def get(self) -> tuple[list[float], float]:
        result: tuple[list[float], float] = self._single().get()
        return result


_CLASSES: dict[str, tuple[type[Metric], type[_Series]]] = {
    COUNTER: (Counter, CounterSeries),
    GAUGE: (Gauge, GaugeSeries),
    HISTOGRAM: (Histogram, HistogramSeries),
}


def _check_text(text: Any, what: str) -> str:
    """A help text or label value: a str that UTF-8 can encode. A lone surrogate
    (what os.fsdecode() makes of a file name's undecodable bytes) cannot be."""
    if not isinstance(text, str):
        raise MetricsError(f"{what} must be a string, got {text!r}")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise MetricsError(
            f"{what} {text!r} is not valid text (a lone surrogate, as os.fsdecode() makes "
            "of undecodable bytes): encode it first, e.g. with errors='backslashreplace'"
        ) from None
    return text


def _check_label_name(label: Any, kind: str) -> str:
    if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
        raise MetricsError(f"bad label name {label!r}")
    if kind == HISTOGRAM and label == "le":
        raise MetricsError("a histogram cannot have a label named 'le'")
    return label


def _check_name(name: Any, builtin: bool = False) -> str:
    """An app's metric name; with `builtin`, one of BUILTIN_METRICS may pass too
    (what the master reads from an arena, where a worker kind declared it)."""
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise MetricsError(
            f"bad metric name {name!r}: letters, digits, '_' and ':', not starting with a digit"
        )
    if name.startswith(RESERVED_PREFIX) and not (builtin and name in BUILTIN_METRICS):
        raise MetricsError(f"bad metric name {name!r}: {RESERVED_PREFIX}* is the master's")
    return name


def _check_labels(labels: Mapping[str, Sequence[Any]] | None, kind: str) -> dict[str, list[str]]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise MetricsError(
            'labels must be a dict of label name -> its values, e.g. {"kind": ["a", "b"]}'
        )
    checked: dict[str, list[str]] = {}
    for label, values in labels.items():
        _check_label_name(label, kind)
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise MetricsError(f"label {label!r}: give the list of its values, got {values!r}")
        texts = [_check_text(str(v), f"label {label!r}: value") for v in values]
        if not texts:
            raise MetricsError(f"label {label!r}: no values given")
        if len(set(texts)) != len(texts):
            raise MetricsError(f"label {label!r}: a value is given twice")
        checked[label] = texts
    return checked


def _check_buckets(buckets: Iterable[float]) -> tuple[float, ...]:
    try:
        bounds = [float(b) for b in buckets]
    except (TypeError, ValueError):
        raise MetricsError(f"buckets must be numbers, got {buckets!r}") from None
    if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
        bounds.pop()  # +Inf is always there
    if not bounds:
        raise MetricsError("a histogram needs at least one finite bucket")
    if len(bounds) > MAX_BUCKETS:
        raise MetricsError(f"at most {MAX_BUCKETS} buckets, got {len(bounds)}")
    if any(math.isnan(b) or math.isinf(b) for b in bounds) or any(
        a >= b for a, b in itertools.pairwise(bounds)
    ):
        raise MetricsError(f"buckets must be finite and increasing, got {bounds!r}")
    return tuple(bounds)


class Registry:
    """This process's metrics. In a worker it writes to the worker's arena; in
    the master (--preload, config file) to a private buffer, replayed into each
    worker's arena after fork."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._decls: list[Decl] = []
        self._schema = Schema()
        self._all_series: list[_Series] = []
        self._slots = 0
        self._arena: Arena | None = None
        self._local: memoryview[float] | None = None

    def _values(self) -> memoryview[float]:
        if self._arena is not None:
            return self._arena.values
        if self._local is None:
            self._local = memoryview(bytearray(MAX_SLOTS * 8)).cast("d")
        return self._local

    # -- declaring --

    def counter(
        self, name: str, help: str, labels: Mapping[str, Sequence[Any]] | None = None
    ) -> Counter:
        # prometheus_client exposes a counter as NAME_total: `x` and `x_total` are one.
        name = _check_name(name)
        if name.endswith("_total"):
            name = _check_name(name[: -len("_total")])
        metric = self._declare(COUNTER, name, help, labels, ())
        assert isinstance(metric, Counter)
        return metric

    def gauge(
        self, name: str, help: str, labels: Mapping[str, Sequence[Any]] | None = None
    ) -> Gauge:
        metric = self._declare(GAUGE, _check_name(name), help, labels, ())
        assert isinstance(metric, Gauge)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labels: Mapping[str, Sequence[Any]] | None = None,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        bounds = _check_buckets(buckets)
        metric = self._declare(HISTOGRAM, _check_name(name), help, labels, bounds)
        assert isinstance(metric, Histogram)
        return metric

    def _declare(
        self,
        kind: str,
        name: str,
        help: Any,
        labels: Mapping[str, Sequence[Any]] | None,
        buckets: tuple[float, ...],
    ) -> Metric:
        help = _check_text(help, f"metric {name}: help")
        checked = _check_labels(labels, kind)
        labelnames = tuple(checked)
        series = tuple(itertools.product(*checked.values())) if checked else ((),)
        existing = self._metrics.get(name)
        if existing is not None:
            return _same_again(existing, kind, help, labelnames, series, buckets)
        decl = Decl(name, kind, help, labelnames, series, buckets, self._slots)
        self._schema.check(decl)
        if self._arena is not None:
            self._arena.append(decl.record(), decl.end)
        values = self._values()
        metric_class, series_class = _CLASSES[kind]
        by_values: dict[tuple[str, ...], _Series] = {}
        for k, label_values in enumerate(series):
            index = decl.offset + k * decl.width
            one: _Series = (
                HistogramSeries(values, index, buckets)
                if kind == HISTOGRAM
                else series_class(values, index)
            )
            by_values[label_values] = one
            self._all_series.append(one)
        self._decls.append(decl)
        self._schema.add(decl)
        self._slots = decl.end
        metric = metric_class(decl, by_values)
        self._metrics[name] = metric
        return metric

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._metrics.values()))

    # -- after fork --

    def bind(self, arena: Arena) -> None:
        """In a new worker (or spare): from now on every update goes to `arena`.
        What the master declared (and counted) before the fork is replayed into it,
        as if this process had run those declarations itself."""
        arena.magic[0] = _MAGIC
        arena.magic[1] = _LAYOUT
        for decl in self._decls:
            arena.append(decl.record(), decl.end)
        if self._local is not None:
            arena.values[: self._slots] = self._local[: self._slots]
        for one in self._all_series:
            one._values = arena.values
        for metric in self._metrics.values():
            if metric._only is not None:
                metric._values = arena.values
        self._arena = arena
        if self._local is not None:
            self._local.release()
            self._local = None


# The one registry of this process: `worker.metrics`, and the module functions.
REGISTRY = Registry()


def counter(name: str, help: str, labels: Mapping[str, Sequence[Any]] | None = None) -> Counter:
    return REGISTRY.counter(name, help, labels)


def gauge(name: str, help: str, labels: Mapping[str, Sequence[Any]] | None = None) -> Gauge:
    return REGISTRY.gauge(name, help, labels)


def histogram(
    name: str,
    help: str,
    labels: Mapping[str, Sequence[Any]] | None = None,
    buckets: Iterable[float] = DEFAULT_BUCKETS,
) -> Histogram:
    return REGISTRY.histogram(name, help, labels, buckets)


def builtin_metric(
    kind: str,
    name: str,
    help: str,
    labels: Mapping[str, Sequence[Any]] | None = None,
    buckets: Iterable[float] = (),
) -> Metric:
    """A worker kind's own metric (unicornish_http_*, for --asgi and --wsgi): declared
    in the worker's arena like an app's, under the prefix an app cannot take."""
    if name not in BUILTIN_METRICS:
        raise MetricsError(f"not a built-in metric: {name!r}")
    bounds = _check_buckets(buckets) if kind == HISTOGRAM else ()
    return REGISTRY._declare(kind, name, help, labels, bounds)


def _same_again(
    existing: Metric,
    kind: str,
    help: str,
    labelnames: tuple[str, ...],
    series: tuple[tuple[Any, ...], ...],
    buckets: tuple[float, ...],
) -> Metric:
    """A metric declared again (a second import, after_fork): the same one, or an
    error naming what differs."""
    old = existing.decl
    differs = [
        what
        for what, before, now in (
            ("type", old.kind, kind),
            ("help", old.help, help),
            ("labels", old.series, series)
            if old.labelnames == labelnames
            else ("label names", old.labelnames, labelnames),
            ("buckets", old.buckets, buckets),
        )
        if before != now
    ]
    if differs:
        raise MetricsError(
            f"metric {existing.decl.name} is already declared with another {', '.join(differs)}"
        )
    return existing
