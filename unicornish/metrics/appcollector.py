"""The master's side of app metrics: every worker's arena summed at scrape time.

An arena is the worker's own memory, and the worker runs app code that can
write anything into it: what the master reads there is untrusted input.

* Declarations are checked by the rules the app's own declarations follow
  (appmetrics.Decl.parse, appmetrics.Schema). One that breaks a rule makes
  that worker's arena bad: its series are left out of every scrape (logged
  once per worker, at most once a minute), the others' are served.
* Values are checked where a scrape would serve what no counter or histogram
  can have: a counter below 0 or NaN, a bucket count that is not a whole
  number >= 0, a NaN sum. The sums are checked (one test per series served);
  only a sum that fails is taken apart, and the workers whose values made it
  fail are left out of that series (logged, at most once a minute).
* Workers of one app declare the same records: their value slots are summed
  slot by slot first (zip and sum: C loops), and the series read once from
  the sums, instead of once per worker (73 -> 13 ms for 256 workers of 350
  series each, bench/exposition.py).
* Workers may declare one name differently (other type, labels or buckets,
  as after a HUP without --preload), or names whose samples clash (`counter
  x` in one, `gauge x_total` in another). Exactly one of them is served:
  the newest generation's (a HUP or a refork starts one: the app may have
  changed on purpose); within a generation, the one served before, as long
  as a worker or the kept totals still have it; else the lowest slot's (the
  oldest worker of a slot first), then the reaped workers' totals. So what
  is served does not flip as workers of one generation come and go. Each
  one left out is logged once.

Each series left out counts in unicornish_metrics_dropped_series_total
(families.Exposition writes it, from `dropped`), at each scrape.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from unicornish.host import log as log_module
from unicornish.host.log import Throttled
from unicornish.metrics.appmetrics import COUNTER, GAUGE, HISTOGRAM, Arena, Decl, exposed_names
from unicornish.metrics.exposition import Family, escape_label_value, label_text, number

Shape = tuple[str, str, tuple[str, ...], tuple[float, ...]]  # name, type, labels, buckets
LabelValues = tuple[str, ...]

BAD_ARENA = "bad_arena"
BAD_VALUE = "bad_value"


class Source(Protocol):
    """A live process whose arena is read: a worker (or a mold), as the master
    records it."""

    nr: int
    pid: int
    generation: int
    spawned_at: float
    arena: Arena | None

    @property
    def label(self) -> str: ...


@dataclass
class Totals:
    help: str
    series: dict[LabelValues, list[float]]
    generation: int = 0  # the newest generation whose values are in it


@dataclass
class Candidate:
    """A shape some source declared, as the first (most preferred) one has it."""

    help: str
    who: str
    generation: int


def bad_values(kind: str, values: Sequence[float]) -> bool:
    """Values a series of this type cannot have (pure: unit-tested on its own)."""
    if kind == COUNTER:
        return not values[0] >= 0  # NaN too
    if kind == HISTOGRAM:
        total = values[-1]
        return total != total or not all(count >= 0 and count.is_integer() for count in values[:-1])
    return False


def _series(decl: Decl, values: list[float]) -> Iterator[tuple[LabelValues, list[float]]]:
    width = decl.width
    for k, labelvalues in enumerate(decl.series):
        start = decl.offset + k * width
        chunk = values[start : start + width]
        if len(chunk) == width:
            yield labelvalues, chunk


def _add(totals: Totals, labelvalues: LabelValues, values: list[float]) -> None:
    found = totals.series.get(labelvalues)
    if found is None:
        totals.series[labelvalues] = list(values)
    else:
        for k, v in enumerate(values):
            found[k] += v


@dataclass
class _Read:
    who: str
    generation: int
    decls: list[Decl]
    values: list[float]
    records: bytes  # what its declarations were parsed from (Arena.parsed)


def _sum_alike(read: list[_Read]) -> Iterator[tuple[list[Decl], list[float]]]:
    """(declarations, values) with the values of workers whose declarations are
    the same records added up slot by slot, in the order `read` has them."""
    # The number of slots too: an app may write any length into its arena, and
    # one shorter list must not cut the others' short.
    alike: dict[tuple[bytes, int], list[_Read]] = {}
    for one in read:
        alike.setdefault((one.records, len(one.values)), []).append(one)
    for group in alike.values():
        if len(group) == 1:
            yield group[0].decls, group[0].values
        else:
            columns = zip(*(one.values for one in group), strict=True)
            yield group[0].decls, list(map(sum, columns))


class AppMetrics:
    """The master's collector of the apps' metrics.

    `sources` gives the live workers and molds (spares are left out: they have
    not served yet). `retire()` is called when one is reaped."""

    def __init__(
        self,
        sources: Callable[[], Iterable[Source]],
        log: logging.Logger | None = None,
    ) -> None:
        self.sources = sources
        self.log = log or log_module.get_logger()
        self.throttled = Throttled(self.log)
        self.retired: dict[Shape, Totals] = {}
        self.served: list[Shape] = []  # what the last scrape served, first served first
        self.refusals_logged: set[Shape] = set()
        self.dropped = {BAD_ARENA: 0, BAD_VALUE: 0}  # series left out, all scrapes so far

    # -- reading an arena ----------------------------------------------------------

    def _declarations(self, arena: Arena, who: str) -> list[Decl]:
        decls = arena.declarations()
        if arena.bad and not arena.reported:
            arena.reported = True
            self.throttled.warn(
                BAD_ARENA,
                f"app metrics: {who}: its metrics memory breaks a rule ({arena.bad}); "
                "its series are left out",
            )
        return decls

    def _bad_value(self, decl: Decl, labelvalues: LabelValues, who: str) -> None:
        self.throttled.warn(
            BAD_VALUE,
            f"app metrics: {who}: the {decl.kind} {decl.name}{list(labelvalues)!r} holds a value "
            f"no {decl.kind} can have (NaN, below 0, a fraction of a count): "
            "its part of that series is left out",
        )

    def retire(self, arena: Arena, who: str = "a reaped worker", generation: int = 0) -> None:
        """Fold a reaped worker's final counters and histograms into the retired
        totals (its gauges die with it), then unmap its arena."""
        try:
            decls = self._declarations(arena, who)
            values = arena.snapshot() if decls else []
            for decl in decls:
                if decl.kind == GAUGE:
                    continue
                totals = self.retired.get(decl.shape)
                if totals is None:
                    totals = self.retired[decl.shape] = Totals(decl.help, {}, generation)
                totals.generation = max(totals.generation, generation)
                for labelvalues, chunk in _series(decl, values):
                    if bad_values(decl.kind, chunk):
                        self._bad_value(decl, labelvalues, who)
                    else:
                        _add(totals, labelvalues, chunk)
        finally:
            arena.close()

    def _read_live(self) -> list[_Read]:
        """The live arenas that pass the checks: the newest generation, then the
        lowest slot, then the oldest worker first."""
        found: list[_Read] = []
        live = [s for s in self.sources() if s.arena is not None]
        for source in sorted(live, key=lambda s: (-s.generation, s.nr, s.spawned_at, s.pid)):
            arena = source.arena
            assert arena is not None
            who = f"{source.label} pid={source.pid}"
            decls = self._declarations(arena, who)
            if arena.bad:
                self.dropped[BAD_ARENA] += max(1, arena.checked.series)
            elif decls:
                found.append(_Read(who, source.generation, decls, arena.snapshot(), arena.parsed))
        return found

    # -- which declaration of a name is served ---------------------------------------------

    def _choose(self, candidates: dict[Shape, Candidate]) -> list[Shape]:
        """The shapes to serve, none of whose exposed names clash: the newest
        generation's first; within one, those served before and still present,
        then the others in `candidates`' order."""
        before = {shape: k for k, shape in enumerate(self.served) if shape in candidates}
        position = {shape: k for k, shape in enumerate(candidates)}
        ranked = sorted(
            candidates,
            key=lambda shape: (
                -candidates[shape].generation,
                0 if shape in before else 1,
                before.get(shape, 0),
                position[shape],
            ),
        )
        taken: dict[str, Shape] = {}
        chosen: list[Shape] = []
        for shape in ranked:
            names = exposed_names(shape[0], shape[1])
            clash = next((taken[n] for n in names if n in taken), None)
            if clash is None:
                chosen.append(shape)
                taken.update(dict.fromkeys(names, shape))
            elif shape not in self.refusals_logged:
                self.refusals_logged.add(shape)
                self.log.warning(
                    "app metrics: %s %s%s (declared by %s) is left out: the %s %s%s is served "
                    "under that name",
                    shape[1],
                    shape[0],
                    list(shape[2]),
                    candidates[shape].who,
                    clash[1],
                    clash[0],
                    list(clash[2]),
                )
        self.served = chosen
        return chosen

    # -- the sums ------------------------------------------------------------------

    def families(self) -> dict[Shape, Totals]:
        """Live workers summed, then the retired totals; one shape per name."""
        read = self._read_live()
        candidates: dict[Shape, Candidate] = {}  # in the order of preference
        seen: set[bytes] = set()
        for one in read:
            if one.records in seen:
                continue  # the same declarations as a worker before it
            seen.add(one.records)
            for decl in one.decls:
                if decl.shape not in candidates:
                    candidates[decl.shape] = Candidate(decl.help, one.who, one.generation)
        for shape, retired in self.retired.items():
            if shape not in candidates:
                candidates[shape] = Candidate(retired.help, "a reaped worker", retired.generation)
            else:
                candidate = candidates[shape]
                candidate.generation = max(candidate.generation, retired.generation)
        found = {shape: Totals(candidates[shape].help, {}) for shape in self._choose(candidates)}
        for decls, values in _sum_alike(read):
            for decl in decls:
                totals = found.get(decl.shape)
                if totals is not None:
                    for labelvalues, chunk in _series(decl, values):
                        _add(totals, labelvalues, chunk)
        for shape, retired in self.retired.items():
            totals = found.get(shape)
            if totals is not None:
                for labelvalues, values in retired.series.items():
                    _add(totals, labelvalues, values)
        for shape, totals in found.items():
            for labelvalues in [
                lv for lv, values in totals.series.items() if bad_values(shape[1], values)
            ]:
                self._sum_again(shape, labelvalues, totals, read)
        return found

    def _sum_again(
        self, shape: Shape, labelvalues: LabelValues, totals: Totals, read: list[_Read]
    ) -> None:
        """A sum that cannot be served: summed again, leaving out each worker's
        values that cannot be (the retired totals were checked when kept)."""
        kind = shape[1]
        again = Totals(totals.help, {})
        for one in read:
            for decl in one.decls:
                if decl.shape != shape:
                    continue
                for found, chunk in _series(decl, one.values):
                    if found != labelvalues:
                        continue
                    if bad_values(kind, chunk):
                        self.dropped[BAD_VALUE] += 1
                        self._bad_value(decl, labelvalues, one.who)
                    else:
                        _add(again, labelvalues, chunk)
        retired = self.retired.get(shape)
        if retired is not None and labelvalues in retired.series:
            _add(again, labelvalues, retired.series[labelvalues])
        values = again.series.get(labelvalues)
        if values is None or bad_values(kind, values):
            # Good parts, bad sum (counts past the float range): nothing to serve.
            del totals.series[labelvalues]
            self.dropped[BAD_VALUE] += values is not None
        else:
            totals.series[labelvalues] = values

    def own_families(self) -> Iterator[Family]:
        """The families, by name, written as prometheus_client wrote them
        before: labels sorted by name (`le` among them), `le` as Python's repr."""
        found = self.families()
        for shape in sorted(found, key=lambda shape: shape[0]):
            yield _family(shape, found[shape])


def _family(shape: Shape, totals: Totals) -> Family:
    name, kind, labelnames, bounds = shape
    family = Family(name, kind, totals.help)
    order = sorted(range(len(labelnames)), key=labelnames.__getitem__)
    names = tuple(labelnames[k] for k in order)
    if kind != HISTOGRAM:
        sample = family.sample_name()
        for labelvalues, values in totals.series.items():
            labels = label_text(names, tuple(labelvalues[k] for k in order))
            family.add_line(sample, labels, values[0])
        return family
    les = [repr(float(bound)) for bound in bounds] + ["+Inf"]
    at = bisect.bisect_left(names, "le")
    for labelvalues, values in totals.series.items():
        ordered = tuple(labelvalues[k] for k in order)
        pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, ordered, strict=True)]
        before = "".join(pair + "," for pair in pairs[:at])
        after = "".join("," + pair for pair in pairs[at:])
        lines, running = [], 0.0
        for le, count in zip(les, values[:-1], strict=True):
            running += count
            lines.append(f'{name}_bucket{{{before}le="{le}"{after}}} {number(running)}\n')
        labels = label_text(names, ordered)
        lines.append(f"{name}_count{labels} {number(running)}\n")
        lines.append(f"{name}_sum{labels} {number(values[-1])}\n")
        family.lines.append("".join(lines))
    return family
