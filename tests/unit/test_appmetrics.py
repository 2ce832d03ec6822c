"""appmetrics.py without a master: declarations and their checks, the arena's schema
and values, real forked writers, and the collector's sums, retired totals and output.

The forked children here are this test's own, each waited for (and SIGKILLed on a
failure) before the test ends."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from unicornish.metrics import appmetrics
from unicornish.metrics.appcollector import AppMetrics
from unicornish.metrics.appmetrics import MAX_SERIES, Arena, MetricsError, Registry
from unicornish.metrics.exposition import write


@pytest.fixture
def arenas() -> Iterator[Callable[[], Arena]]:
    made: list[Arena] = []

    def make() -> Arena:
        arena = Arena()
        made.append(arena)
        return arena

    yield make
    for arena in made:
        try:
            arena.close()
        except (ValueError, BufferError):
            pass  # closed by the test (retire)


def in_child(arena: Arena, work: Callable[[Registry], None]) -> None:
    """Run `work` in a forked child writing to `arena`, as a worker would; wait for it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            registry = Registry()
            registry.bind(arena)
            work(registry)
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            code = 1
        os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def sources(arenas: list[Arena]) -> Callable[[], list[SimpleNamespace]]:
    """The live workers AppMetrics reads: one per arena in `arenas` (read at each
    call, so a test may remove one), in slot k for the k-th."""
    return lambda: [
        SimpleNamespace(nr=k, pid=1000 + k, spawned_at=0.0, arena=arena, label=f"worker[{k}]")
        for k, arena in enumerate(arenas)
    ]


def exposition(collector: AppMetrics, openmetrics: bool = False) -> str:
    return write(collector.own_families(), openmetrics).body.decode()


def samples(collector: AppMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, as prometheus_client's parser (the test oracle) reads our text."""
    parser = pytest.importorskip("prometheus_client.parser")
    found = {}
    for family in parser.text_string_to_metric_families(exposition(collector)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- declaring ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é", None, "unicornish_mine", "_total"])
def test_bad_metric_names_are_refused(name):
    with pytest.raises(MetricsError, match="bad metric name"):
        Registry().counter(name, "help")


@pytest.mark.parametrize("label", ["", "1a", "a-b", "__reserved"])
def test_bad_label_names_are_refused(label):
    with pytest.raises(MetricsError, match="bad label name"):
        Registry().gauge("g", "help", labels={label: ["x"]})


@pytest.mark.parametrize(
    "labels, match",
    [
        ({"kind": []}, "no values given"),
        ({"kind": "ab"}, "give the list of its values"),
        ({"kind": ["a", "a"]}, "given twice"),
        (["kind"], "must be a dict"),
    ],
)
def test_bad_label_sets_are_refused(labels, match):
    with pytest.raises(MetricsError, match=match):
        Registry().counter("c", "help", labels=labels)


@pytest.mark.parametrize(
    "buckets, match",
    [
        ([], "at least one finite bucket"),
        ([1, 1], "increasing"),
        ([2, 1], "increasing"),
        ([float("nan")], "finite"),
        (["x"], "must be numbers"),
        (range(1, 100), "at most 64 buckets"),
    ],
)
def test_bad_buckets_are_refused(buckets, match):
    with pytest.raises(MetricsError, match=match):
        Registry().histogram("h", "help", buckets=buckets)


def test_a_histogram_cannot_have_an_le_label():
    with pytest.raises(MetricsError, match="'le'"):
        Registry().histogram("h", "help", labels={"le": ["1"]})


def test_declaring_again_gives_the_same_metric_and_a_different_declaration_fails():
    registry = Registry()
    first = registry.counter("jobs", "Jobs", labels={"kind": ["a", "b"]})
    assert registry.counter("jobs_total", "Jobs", labels={"kind": ["a", "b"]}) is first
    with pytest.raises(MetricsError, match="already declared with another labels"):
        registry.counter("jobs", "Jobs", labels={"kind": ["a"]})
    with pytest.raises(MetricsError, match="with another label names"):
        registry.counter("jobs", "Jobs", labels={"sort": ["a", "b"]})
    with pytest.raises(MetricsError, match="with another type, help, label names$"):
        registry.gauge("jobs", "Queue")


def test_series_beyond_the_limit_are_refused_with_the_figures():
    registry = Registry()
    registry.counter("many", "help", labels={"n": [str(i) for i in range(MAX_SERIES - 1)]})
    registry.gauge("one_more", "help")  # exactly MAX_SERIES now
    with pytest.raises(MetricsError, match=f"limit of {MAX_SERIES} series per worker"):
        registry.gauge("too_many", "help")


def test_value_slots_beyond_the_limit_are_refused():
    registry = Registry()
    labels = {"n": [str(i) for i in range(100)]}
    buckets = [float(i) for i in range(1, 60)]  # 61 slots per series
    with pytest.raises(MetricsError, match="value slots"):
        registry.histogram("wide", "help", labels=labels, buckets=buckets)


def test_updates_check_labels_and_direction():
    registry = Registry()
    jobs = registry.counter("jobs", "help", labels={"kind": ["a", "b"], "code": [200, 500]})
    jobs.labels(kind="a", code=200).inc()
    jobs.labels("b", "500").inc(2)
    assert jobs.labels(kind="b", code="500").get() == 2.0
    with pytest.raises(MetricsError, match="was not declared"):
        jobs.labels(kind="c", code=200)
    with pytest.raises(MetricsError, match="has labels"):
        jobs.labels(kind="a")
    with pytest.raises(MetricsError, match="got 1 values"):
        jobs.labels("a")
    with pytest.raises(MetricsError, match="use .labels"):
        jobs.inc()
    with pytest.raises(MetricsError, match="only goes up"):
        jobs.labels(kind="a", code=200).inc(-1)
    plain = registry.gauge("plain", "help")
    with pytest.raises(MetricsError, match="has no labels"):
        plain.labels("x")
    plain.set(3)
    plain.dec()
    plain.inc(0.5)
    assert plain.get() == 2.5


def test_histogram_buckets_are_inclusive_and_plus_inf_is_implicit():
    registry = Registry()
    h = registry.histogram("lat", "help", buckets=[0.1, 1, float("inf")])
    for value in (0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    counts, total = h.get()
    assert counts == [1.0, 2.0, 1.0]  # <=0.1, <=1, +Inf: one count each, not cumulative
    assert total == pytest.approx(8.6)


# -- the arena: real processes --------------------------------------------------------------


def test_a_forked_writer_is_summed_with_another(arenas):
    one, two = arenas(), arenas()

    def work(times: int) -> Callable[[Registry], None]:
        def run(registry: Registry) -> None:
            jobs = registry.counter("jobs", "Jobs", labels={"kind": ["a", "b"]})
            for _ in range(times):
                jobs.labels(kind="a").inc()
            registry.gauge("up", "Up").set(1)
            registry.histogram("lat", "Latency", buckets=[1, 2]).observe(1.5)

        return run

    in_child(one, work(1000))
    in_child(two, work(234))
    found = samples(AppMetrics(sources([one, two])))
    assert found[("jobs_total", (("kind", "a"),))] == 1234
    assert found[("jobs_total", (("kind", "b"),))] == 0  # preallocated
    assert found[("up", ())] == 2
    assert found[("lat_bucket", (("le", "1.0"),))] == 0
    assert found[("lat_bucket", (("le", "2.0"),))] == 2
    assert found[("lat_bucket", (("le", "+Inf"),))] == 2
    assert found[("lat_count", ())] == 2
    assert found[("lat_sum", ())] == 3.0


def test_counters_and_histograms_stay_monotonic_when_a_worker_is_retired(arenas):
    live = [arenas(), arenas()]

    def work(registry: Registry) -> None:
        registry.counter("jobs", "Jobs").inc(5)
        registry.gauge("up", "Up").set(1)
        registry.histogram("lat", "Latency", buckets=[1]).observe(0.5)

    for arena in live:
        in_child(arena, work)
    collector = AppMetrics(sources(live))
    before = samples(collector)
    dead = live.pop(0)
    collector.retire(dead)
    after = samples(collector)
    assert before[("jobs_total", ())] == after[("jobs_total", ())] == 10
    assert before[("lat_count", ())] == after[("lat_count", ())] == 2
    assert (before[("up", ())], after[("up", ())]) == (2, 1)  # gauges: live workers only
    collector.retire(live.pop())  # every worker gone: the counters are all that is left
    final = samples(collector)
    assert final[("jobs_total", ())] == 10 and ("up", ()) not in final


def test_the_schema_is_parsed_again_only_when_its_generation_moves(arenas):
    arena = arenas()
    registry = Registry()
    registry.bind(arena)
    registry.counter("a", "A")
    first = arena.declarations()
    parsed_to = arena.parsed_to
    assert [d.name for d in first] == ["a"]
    assert arena.declarations() is first and arena.parsed_to == parsed_to
    registry.gauge("b", "B")
    assert [d.name for d in arena.declarations()] == ["a", "b"]
    assert arena.parsed_to > parsed_to


def test_what_a_preloading_master_declared_and_counted_is_replayed_after_fork(arenas):
    master = Registry()
    jobs = master.counter("jobs", "Jobs", labels={"kind": ["a"]})
    jobs.labels(kind="a").inc(3)  # at import time, in the master
    arena = arenas()
    pid = os.fork()
    if pid == 0:
        master.bind(arena)  # what the spawner does in the child
        jobs.labels(kind="a").inc()  # the app's module-level object, after fork
        os._exit(0)
    os.waitpid(pid, 0)
    assert samples(AppMetrics(sources([arena])))[("jobs_total", (("kind", "a"),))] == 4
    assert jobs.labels(kind="a").get() == 3  # the master's own buffer is untouched


def test_a_scribbled_arena_never_breaks_the_collector(arenas):
    arena = arenas()
    registry = Registry()
    registry.bind(arena)
    registry.counter("good", "Good").inc()
    bad = b'not json\n{"n":"x","t":"counter","h":"","l":[],"s":[[]],"b":[],"o":999999}\n'
    used = int(arena.lengths[0])
    arena.schema[used : used + len(bad)] = bad
    arena.lengths[0] = used + len(bad)
    arena.lengths[1] = 10**9  # a length far past the arena
    arena.generation[0] += 1
    found = samples(AppMetrics(sources([arena])))
    assert found == {("good_total", ()): 1.0}


def test_a_name_declared_with_two_shapes_shows_the_first_only(arenas):
    one, two = arenas(), arenas()
    in_child(one, lambda r: r.counter("x", "X").inc())
    in_child(two, lambda r: r.gauge("x", "X").set(7))
    text = exposition(AppMetrics(sources([one, two])))
    assert [line for line in text.splitlines() if line.startswith("# TYPE")] == [
        "# TYPE x_total counter"
    ]


def test_exposition_is_valid_prometheus_text(arenas):
    arena = arenas()
    requests = {"code": [200]}
    in_child(arena, lambda r: r.counter("req", "Requests", labels=requests).labels(200).inc())
    text = exposition(AppMetrics(sources([arena])))
    assert 'req_total{code="200"} 1.0\n' in text
    from prometheus_client.parser import text_string_to_metric_families

    assert [f.name for f in text_string_to_metric_families(text)] == ["req"]


def test_the_module_functions_use_the_process_registry():
    assert appmetrics.REGISTRY.__class__ is Registry
    # (Declaring here would leave a metric in this test process's registry for
    # good: the functions are checked to be the registry's, not called.)
    assert appmetrics.counter.__module__ == "unicornish.metrics.appmetrics"
