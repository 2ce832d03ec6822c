"""appmetrics.py without a master: declarations and their checks, the arena's schema
and values, real forked writers, and the collector's sums, retired totals and output.

The forked children here are this test's own, each waited for (and SIGKILLed on a
failure) before the test ends."""

from __future__ import annotations

import json
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


def sources(
    arenas: list[Arena], generations: dict[int, int] | None = None
) -> Callable[[], list[SimpleNamespace]]:
    """The live workers AppMetrics reads: one per arena in `arenas` (read at each
    call, so a test may remove one), in slot k for the k-th, of generation 0
    unless `generations` (slot -> generation, read at each call) says otherwise."""
    gens = generations if generations is not None else {}
    return lambda: [
        SimpleNamespace(
            nr=k,
            pid=1000 + k,
            generation=gens.get(k, 0),
            spawned_at=0.0,
            arena=arena,
            label=f"worker[{k}]",
        )
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


UNDECODABLE = os.fsdecode(b"report-\xff.csv")  # a file name that is not UTF-8


def test_a_label_value_or_help_that_cannot_be_exposed_is_refused():
    with pytest.raises(MetricsError, match="label 'file': value 'report-.udcff.csv' is not valid"):
        Registry().counter("files", "Files", labels={"file": [UNDECODABLE]})
    with pytest.raises(MetricsError, match="metric files: help .* is not valid text"):
        Registry().gauge("files", f"Files like {UNDECODABLE}")
    registry = Registry()  # what the error suggests works
    safe = UNDECODABLE.encode(errors="surrogateescape").decode(errors="backslashreplace")
    registry.counter("files", "Files", labels={"file": [safe]}).labels(file=safe).inc()


@pytest.mark.parametrize(
    "first, second, exposed",
    [
        (("counter", "foo"), ("gauge", "foo_total"), "foo_total"),
        (("gauge", "foo_total"), ("counter", "foo"), "foo_total"),
        (("counter", "foo_total"), ("gauge", "foo_created"), "foo_created"),
        (("histogram", "bar"), ("gauge", "bar_count"), "bar_count"),
        (("histogram", "bar"), ("gauge", "bar_bucket"), "bar_bucket"),
        (("histogram", "bar"), ("counter", "bar_sum"), "bar_sum"),
        (("gauge", "bar_count"), ("histogram", "bar"), "bar_count"),
    ],
)
def test_names_whose_exposed_samples_clash_are_refused(first, second, exposed):
    registry = Registry()
    getattr(registry, first[0])(first[1], "help")
    with pytest.raises(MetricsError, match=f"clashes with the {first[0]} .*exposed as {exposed}$"):
        getattr(registry, second[0])(second[1], "help")
    getattr(registry, second[0])(second[1] + "_other", "help")  # a name of its own is fine


def test_counters_refuse_nan_infinity_and_what_is_not_a_number():
    registry = Registry()
    plain = registry.counter("plain", "help")
    labelled = registry.counter("labelled", "help", labels={"k": ["a"]}).labels(k="a")
    for counter in (plain, labelled):
        counter.inc(2)
        for amount in (float("nan"), float("inf"), -1, "5", None, 10**400):
            with pytest.raises(MetricsError, match="inc\\(\\) needs a finite number >= 0"):
                counter.inc(amount)  # type: ignore[arg-type]
        assert counter.get() == 2.0


def test_gauges_and_histograms_refuse_what_is_not_a_number():
    registry = Registry()
    gauge = registry.gauge("g", "help")
    for method in (gauge.inc, gauge.dec, gauge.set):
        with pytest.raises(MetricsError, match="needs a number, got '5'"):
            method("5")  # type: ignore[arg-type]
    gauge.set(float("nan"))  # a gauge may say "unknown"
    histogram = registry.histogram("h", "help", buckets=[1])
    for value in ("5", float("nan"), None):
        with pytest.raises(MetricsError, match="observe\\(\\) needs a number other than NaN"):
            histogram.observe(value)  # type: ignore[arg-type]
    histogram.observe(0.5)
    assert histogram.get() == ([1.0, 0.0], 0.5)  # nothing of the refused ones


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


def scribble(arena: Arena, record: bytes) -> None:
    """What an app writing into its own arena directly can do: append a record."""
    used = int(arena.lengths[0])
    arena.schema[used : used + len(record)] = record
    arena.lengths[0] = used + len(record)
    arena.generation[0] += 1


def good_and_bad(arenas: Callable[[], Arena]) -> tuple[Arena, Arena]:
    """Two workers counting `good`; the second's arena is then scribbled on."""
    good, bad = arenas(), arenas()
    for arena in (good, bad):
        registry = Registry()
        registry.bind(arena)
        registry.counter("good", "Good").inc()
    return good, bad


def record(**fields: object) -> bytes:
    base: dict[str, object] = {"n": "x", "t": "gauge", "h": "", "l": [], "s": [[]], "b": []}
    return json.dumps({**base, "o": 1, **fields}).encode() + b"\n"


BAD_RECORDS = {
    "not json": b"not json\n",
    "past the arena": record(t="counter", o=999999),
    "the master's name": record(n="unicornish_workers_running"),
    "__name__ label": record(l=["__name__"], s=[["y"]]),
    "le on a histogram": record(t="histogram", l=["le"], s=[["1"]], b=[1.0]),
    "NaN bucket": b'{"n":"h","t":"histogram","h":"","l":[],"s":[[]],"b":[NaN],"o":1}\n',
    "unordered buckets": record(n="h", t="histogram", b=[2.0, 1.0]),
    "a series twice": record(l=["k"], s=[["a"], ["a"]]),
    "a lone surrogate": record(l=["k"], s=[["report-\udcff.csv"]]),
    "help not text": record(h=5),
    "a label given twice": record(l=["k", "k"], s=[["a", "b"]]),
    "a clash with good": record(n="good_total"),
    "a name twice": record(n="good", t="counter"),
}


@pytest.mark.parametrize("bad_record", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_scribbled_arena_costs_its_own_series_only(arenas, bad_record: bytes, caplog):
    good, bad = good_and_bad(arenas)
    scribble(bad, bad_record)
    collector = AppMetrics(sources([good, bad]))
    for _ in range(2):
        assert samples(collector) == {("good_total", ()): 1.0}  # the good worker's only
    assert collector.dropped["bad_arena"] == 2  # one series, at each scrape
    logged = [r.getMessage() for r in caplog.records if "breaks a rule" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("app metrics: worker[1] pid=1001:"), logged
    openmetrics = write(collector.own_families(), True).body.decode() + "# EOF\n"
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    assert [f.name for f in parser.text_string_to_metric_families(openmetrics)] == ["good"]


def test_workers_of_one_app_are_summed_slot_by_slot_and_a_short_one_cuts_only_itself(arenas):
    workers = [arenas() for _ in range(3)]
    for k, arena in enumerate(workers):
        registry = Registry()
        registry.bind(arena)
        registry.counter("a", "A").inc(k + 1)
        registry.counter("b", "B").inc(10 * (k + 1))
    workers[2].lengths[1] = 1  # the app says it uses one value slot: `b` is past it
    found = samples(AppMetrics(sources(workers)))
    assert found == {("a_total", ()): 6.0, ("b_total", ()): 30.0}


def test_values_no_counter_or_histogram_can_have_cost_that_workers_part_only(arenas, caplog):
    one, two = arenas(), arenas()
    for arena in (one, two):
        registry = Registry()
        registry.bind(arena)
        registry.counter("jobs", "Jobs").inc(2)
        registry.histogram("lat", "Latency", buckets=[1]).observe(0.5)
        registry.gauge("temp", "Temperature").set(float("nan"))  # a gauge may be NaN
    two.values[0] = float("nan")  # the counter, written directly
    two.values[2] = 0.5  # the histogram's first bucket: half an observation
    collector = AppMetrics(sources([one, two]))
    found = samples(collector)
    assert found[("jobs_total", ())] == 2  # worker 0's, not NaN
    assert found[("lat_count", ())] == 1
    assert found[("temp", ())] != found[("temp", ())]  # NaN, summed as it is
    assert collector.dropped["bad_value"] == 2
    assert any("its part of that series is left out" in r.getMessage() for r in caplog.records)
    collector.retire(two)  # the reaped worker's NaN never reaches the kept totals
    collector.sources = sources([one])
    assert samples(collector)[("jobs_total", ())] == 2
    assert samples(collector)[("lat_count", ())] == 1


def declaring(arena: Arena, kind: str, name: str, value: float = 1.0) -> None:
    """A worker's own declaration (in this process: a registry per arena)."""
    registry = Registry()
    registry.bind(arena)
    metric = getattr(registry, kind)(name, "help")
    (metric.set if kind == "gauge" else metric.inc)(value)


def types_served(collector: AppMetrics) -> list[str]:
    text = exposition(collector)
    return [line for line in text.splitlines() if line.startswith("# TYPE")]


def test_one_name_declared_twice_serves_the_lowest_slots_and_does_not_flip(arenas, caplog):
    zero, one = arenas(), arenas()
    declaring(zero, "counter", "x")
    declaring(one, "gauge", "x", 7)
    live = [zero, one]
    collector = AppMetrics(sources(live))
    assert types_served(collector) == ["# TYPE x_total counter"]
    # Slot 0 is reaped: its counter lives on in the kept totals, and stays the
    # one served while the gauge's worker runs on (it used to flip to the gauge).
    collector.retire(zero)
    live[0] = arenas()  # its replacement, before it declared anything
    assert types_served(collector) == ["# TYPE x_total counter"]
    declaring(live[0], "counter", "x")
    assert types_served(collector) == ["# TYPE x_total counter"]
    assert exposition(collector).splitlines()[-1] == "x_total 2.0"
    refused = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert refused == [
        "app metrics: gauge x[] (declared by worker[1] pid=1001) is left out: "
        "the counter x[] is served under that name"
    ]


def test_what_is_served_first_stays_while_anything_still_has_it(arenas):
    zero, one = arenas(), arenas()
    declaring(zero, "gauge", "x_total", 5)
    declaring(one, "counter", "x")
    live = [zero, one]
    collector = AppMetrics(sources(live))
    assert types_served(collector) == ["# TYPE x_total gauge"]
    collector.retire(live.pop(0))  # a gauge dies with its worker: nothing has it now
    assert types_served(collector) == ["# TYPE x_total counter"]
    live.insert(0, arenas())
    declaring(live[0], "gauge", "x_total", 5)  # slot 0 again, as before
    assert types_served(collector) == ["# TYPE x_total counter"]  # no flip back


def test_a_newer_generation_may_change_a_type_once_for_good(arenas, caplog):
    # A HUP (a new generation) whose app makes x a gauge: served from the first
    # new worker on, while old workers and the kept totals still have the counter.
    zero, one = arenas(), arenas()
    declaring(zero, "counter", "x")
    declaring(one, "counter", "x")
    live, generations = [zero, one], {0: 1, 1: 1}
    collector = AppMetrics(sources(live, generations))
    assert types_served(collector) == ["# TYPE x_total counter"]
    collector.retire(live[0], "worker[0] pid=1000", 1)
    live[0] = arenas()
    generations[0] = 2
    declaring(live[0], "gauge", "x", 3)
    assert types_served(collector) == ["# TYPE x gauge"]
    collector.retire(live[1], "worker[1] pid=1001", 1)
    live[1] = arenas()
    generations[1] = 2
    declaring(live[1], "gauge", "x", 4)
    assert types_served(collector) == ["# TYPE x gauge"]
    assert exposition(collector).splitlines()[-1] == "x 7.0"
    refused = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(refused) == 1 and refused[0].startswith("app metrics: counter x[]"), refused


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


# What prometheus_client wrote for these, before the master wrote them itself
# (labels sorted by name, `le` among them, as Python's repr): byte for byte.
BEFORE_TEXT = (
    '# HELP jobs_total Jobs "done"\\\\ here\\nnext\n'
    "# TYPE jobs_total counter\n"
    'jobs_total{kind="x",zone="b"} 7.0\n'
    'jobs_total{kind="x",zone="q\\"\\\\\\n"} 0.0\n'
    "# HELP lat Latency\n"
    "# TYPE lat histogram\n"
    'lat_bucket{kind="k",le="0.5",zone="a"} 2.0\n'
    'lat_bucket{kind="k",le="1000000.0",zone="a"} 2.0\n'
    'lat_bucket{kind="k",le="2e+16",zone="a"} 4.0\n'
    'lat_bucket{kind="k",le="+Inf",zone="a"} 4.0\n'
    'lat_count{kind="k",zone="a"} 4.0\n'
    'lat_sum{kind="k",zone="a"} 6.0000005e+06\n'
    "# HELP up Up\n"
    "# TYPE up gauge\n"
    "up 3.0\n"
)
BEFORE_OPENMETRICS = (
    '# HELP jobs Jobs \\"done\\"\\\\ here\\nnext\n'
    "# TYPE jobs counter\n"
    'jobs_total{kind="x",zone="b"} 7.0\n'
    'jobs_total{kind="x",zone="q\\"\\\\\\n"} 0.0\n'
    "# HELP lat Latency\n"
    "# TYPE lat histogram\n"
    'lat_bucket{kind="k",le="0.5",zone="a"} 2.0\n'
    'lat_bucket{kind="k",le="1000000.0",zone="a"} 2.0\n'
    'lat_bucket{kind="k",le="2e+16",zone="a"} 4.0\n'
    'lat_bucket{kind="k",le="+Inf",zone="a"} 4.0\n'
    'lat_count{kind="k",zone="a"} 4.0\n'
    'lat_sum{kind="k",zone="a"} 6.0000005e+06\n'
    "# HELP up Up\n"
    "# TYPE up gauge\n"
    "up 3.0\n"
)


def test_the_text_is_byte_for_byte_what_prometheus_client_wrote(arenas):
    workers = [arenas(), arenas()]
    for k, arena in enumerate(workers):
        registry = Registry()
        registry.bind(arena)
        help = 'Jobs "done"\\ here\nnext'
        labels = {"zone": ["b", 'q"\\\n'], "kind": ["x"]}
        registry.counter("jobs", help, labels=labels).labels(zone="b", kind="x").inc(3 + k)
        registry.gauge("up", "Up").set(1.5)
        latency = registry.histogram(
            "lat", "Latency", labels={"zone": ["a"], "kind": ["k"]}, buckets=[0.5, 1e6, 2e16]
        )
        latency.labels(zone="a", kind="k").observe(0.25)
        latency.labels("a", "k").observe(3e6)
    collector = AppMetrics(sources(workers))
    assert exposition(collector) == BEFORE_TEXT
    assert exposition(collector, openmetrics=True) == BEFORE_OPENMETRICS
