"""The cost of writing the apps' metrics and the deaths for a scrape, both ways.

    .venv/bin/python bench/exposition.py [--workers 256] [--series 64] [--repeat 30]

Until the master wrote every family itself, the apps' metrics and the deaths
by cause went through prometheus_client (custom collectors rendered by its
writers). This times both ways over the same sums, in one process, with
WORKERS arenas each holding SERIES counter series (two labels), SERIES/4
gauges and SERIES/8 histograms of 14 buckets (SERIES/8 series each):

    ours               AppMetrics.own_families() + exposition.write()
    prometheus_client  the same sums as its metric families + its generate_latest()

Both include the reading and summing of every arena (AppMetrics.families()),
the same work either way. Prints the median of REPEAT renders, per format,
in milliseconds of CPU.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from unicornish.master.deaths import Deaths
from unicornish.metrics.appcollector import AppMetrics
from unicornish.metrics.appmetrics import COUNTER, GAUGE, Arena, Registry
from unicornish.metrics.exposition import EOF, write


def build(workers: int, series: int) -> tuple[AppMetrics, Deaths, list[Arena]]:
    arenas = []
    kinds = [f"kind{k}" for k in range(max(1, series // 8))]
    for nr in range(workers):
        arena = Arena()
        registry = Registry()
        registry.bind(arena)
        jobs = registry.counter("jobs", "Jobs done", labels={"kind": kinds, "code": range(8)})
        for key in itertools.islice(itertools.product(kinds, range(8)), series):
            jobs.labels(*key).inc(nr + 1)
        for k in range(max(1, series // 4)):
            registry.gauge(f"level_{k}", "A level").set(k * 0.5)
        latency = registry.histogram("task_seconds", "Task time", labels={"kind": kinds})
        for kind in kinds:
            latency.labels(kind=kind).observe(0.02 * nr)
        arenas.append(arena)
    procs = [
        SimpleNamespace(
            nr=nr, pid=nr, generation=0, spawned_at=0.0, arena=arena, label=f"worker[{nr}]"
        )
        for nr, arena in enumerate(arenas)
    ]
    return AppMetrics(lambda: procs), Deaths(lambda: 0), arenas


def as_prometheus_client(app: AppMetrics, deaths: Deaths) -> Any:
    """The families as prometheus_client collectors, as the master served them
    before: the sums built into its metric families at each collect()."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import CollectorRegistry

    class Apps:
        def collect(self) -> Iterator[Any]:
            found = app.families()
            for shape in sorted(found, key=lambda shape: shape[0]):
                name, kind, labelnames, bounds = shape
                totals = found[shape]
                metric: Any
                if kind in (COUNTER, GAUGE):
                    family = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
                    metric = family(name, totals.help, labels=labelnames)
                    for labelvalues, values in totals.series.items():
                        metric.add_metric(labelvalues, values[0])
                else:
                    metric = HistogramMetricFamily(name, totals.help, labels=labelnames)
                    les = [repr(float(b)) for b in bounds] + ["+Inf"]
                    for labelvalues, values in totals.series.items():
                        cumulative = itertools.accumulate(values[:-1])
                        pairs = list(zip(les, cumulative, strict=True))
                        metric.add_metric(labelvalues, pairs, values[-1])
                yield metric

    class Exits:
        def collect(self) -> Iterator[Any]:
            family = CounterMetricFamily(
                "unicornish_worker_exits", "Workers reaped, by cause of death", labels=["cause"]
            )
            for cause, n in deaths.counts.items():
                family.add_metric([cause], n)
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Apps())
    registry.register(Exits())
    return registry


def median_ms(render: Callable[[], bytes], repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        began = time.process_time()
        size = len(render())
        times.append((time.process_time() - began) * 1000)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--series", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    app, deaths, arenas = build(args.workers, args.series)
    from prometheus_client import exposition as text_writer
    from prometheus_client.openmetrics import exposition as om_writer

    registry = as_prometheus_client(app, deaths)

    def ours(openmetrics: bool) -> Callable[[], bytes]:
        families = lambda: [*app.own_families(), *deaths.own_families()]  # noqa: E731
        tail = EOF.encode() if openmetrics else b""
        return lambda: write(families(), openmetrics).body + tail

    ways = {
        ("ours", "text 0.0.4"): ours(False),
        ("ours", "OpenMetrics"): ours(True),
        ("prometheus_client", "text 0.0.4"): lambda: text_writer.generate_latest(registry),
        ("prometheus_client", "OpenMetrics"): lambda: om_writer.generate_latest(registry),
    }
    sums, _ = median_ms(lambda: bytes(len(app.families())), args.repeat)
    print(f"{args.workers} workers, {args.series} counter series each; summing alone {sums:.1f} ms")
    for (way, fmt), render in ways.items():
        ms, size = median_ms(render, args.repeat)
        print(f"{way:18} {fmt:12} {ms:7.1f} ms  {size} bytes")
    # The writing alone: the sums taken once, each way then writes them.
    found = app.families()
    app.families = lambda: found  # type: ignore[method-assign]
    for (way, fmt), render in ways.items():
        ms, _ = median_ms(render, args.repeat)
        print(f"{way:18} {fmt:12} {ms:7.2f} ms  writing alone")
    for arena in arenas:
        arena.close()


if __name__ == "__main__":
    main()
