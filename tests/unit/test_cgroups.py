"""cgroups.py against fixture trees of /proc and /sys/fs/cgroup (tests/unit/fixtures/NAME):
v1 and v2 file formats, quotas or none, cpusets, memory limits, OOM kill counts, and
the paths of cgroup namespaces and bind mounts. No process is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from unicornish import config
from unicornish.host import cgroups
from unicornish.host.cgroups import FileReader, Membership, Mount, Place

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MIB = 1024 * 1024


def reader(name: str) -> FileReader:
    return FileReader(str(FIXTURES / name))


def groups(name: str) -> cgroups.Cgroups:
    return cgroups.current(reader(name))


# -- /proc/self/cgroup and mountinfo ---------------------------------------------------


def test_proc_cgroup_lines_of_both_versions():
    text = "12:pids:/a\n3:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\nnonsense\n"
    assert cgroups.parse_proc_cgroup(text) == [
        Membership(1, frozenset({"pids"}), "/a"),
        Membership(1, frozenset({"cpu", "cpuacct"}), "/b"),
        Membership(2, frozenset(), "/d"),
    ]


def test_mountinfo_keeps_cgroup_mounts_and_unescapes_paths():
    text = (
        "22 1 0:21 / /sys rw - sysfs sysfs rw\n"
        "29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct\n"
        "40 25 0:40 /x /mnt/my\\040groups rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.parse_mountinfo(text) == [
        Mount(1, frozenset({"rw", "cpu", "cpuacct"}), "/", "/sys/fs/cgroup/cpu,cpuacct"),
        Mount(2, frozenset(), "/x", "/mnt/my groups"),
    ]


@pytest.mark.parametrize(
    "root, path, directory",
    [
        ("/", "/system.slice/a.service", "/sys/fs/cgroup/system.slice/a.service"),
        ("/", "/", "/sys/fs/cgroup"),  # a cgroup namespace: we are its root
        ("/docker/abc", "/docker/abc", "/sys/fs/cgroup"),  # bind mount of our own group
        ("/docker/abc", "/docker/abc/sub", "/sys/fs/cgroup/sub"),
        ("/docker/abc", "/docker/other", None),  # not below the mounted subtree
        ("/docker/abc", "/docker/abcdef", None),  # a prefix of the name is not a parent
        ("/", "/../../elsewhere", None),  # moved out of our namespace's root
    ],
)
def test_locate_relative_to_the_mount_root(root, path, directory):
    mount = Mount(2, frozenset(), root, "/sys/fs/cgroup")
    place = cgroups.locate(Membership(2, frozenset(), path), [mount])
    assert (place.directory if place else None) == directory


def test_locate_prefers_the_deepest_bind_mount_that_holds_us():
    mounts = [
        Mount(1, frozenset({"memory"}), "/", "/host/memory"),
        Mount(1, frozenset({"memory"}), "/docker/abc", "/sys/fs/cgroup/memory"),
        Mount(1, frozenset({"cpu"}), "/docker/abc", "/sys/fs/cgroup/cpu"),
    ]
    place = cgroups.locate(Membership(1, frozenset({"memory"}), "/docker/abc/x"), mounts)
    assert place == Place(1, "/sys/fs/cgroup/memory/x", "/sys/fs/cgroup/memory")


def test_place_chain_walks_up_to_the_mount_point_only():
    place = Place(2, "/sys/fs/cgroup/a/b", "/sys/fs/cgroup")
    assert list(place.chain()) == ["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", "/sys/fs/cgroup"]


def test_v1_controllers_map_to_their_own_mounts():
    found = groups("v1-quota")
    assert found.place("cpu") == Place(
        1, "/sys/fs/cgroup/cpu,cpuacct/system.slice/app.service", "/sys/fs/cgroup/cpu,cpuacct"
    )
    assert found.place("memory").directory == "/sys/fs/cgroup/memory/system.slice/app.service"
    assert found.place("cpuset").directory == "/sys/fs/cgroup/cpuset"
    assert found.v2 is None


def test_hybrid_uses_v1_controllers_and_keeps_the_unified_group():
    found = groups("hybrid")
    assert found.place("cpu").version == 1
    assert found.v2 == Place(2, "/sys/fs/cgroup/unified/user.slice", "/sys/fs/cgroup/unified")
    # cpuset is on no v1 hierarchy we are in: only v2 could have it (it does not, here).
    assert found.place("cpuset") == found.v2
    assert cgroups.cpuset_cpus(found, reader("hybrid")) is None


def test_no_proc_means_no_groups(tmp_path):
    assert cgroups.current(FileReader(str(tmp_path))) == cgroups.Cgroups()


# -- CPU ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, quota",
    [
        ("max 100000\n", None),
        ("max\n", None),
        ("150000 100000\n", (150000, 100000)),
        ("50000 100000", (50000, 100000)),
        ("", None),
        ("junk 100000", None),
    ],
)
def test_cpu_max(text, quota):
    assert cgroups.parse_cpu_max(text) == quota


@pytest.mark.parametrize(
    "quota, period, found",
    [("-1\n", "100000\n", None), ("150000\n", "100000\n", (150000, 100000)), ("x", "1", None)],
)
def test_cfs_quota(quota, period, found):
    assert cgroups.parse_cfs(quota, period) == found


@pytest.mark.parametrize(
    "quota, cpus", [((150000, 100000), 2), ((50000, 100000), 1), ((400000, 100000), 4)]
)
def test_quota_rounds_up_and_is_at_least_one(quota, cpus):
    assert cgroups.quota_cpus(quota) == cpus


@pytest.mark.parametrize(
    "name, quota",
    [
        ("v1-quota", (150000, 100000)),
        ("v1-none", None),
        ("v1-docker", (50000, 100000)),
        ("v2-namespace", (150000, 100000)),
        ("v2-nested", (400000, 100000)),  # the pod's quota, a parent of our group
        ("hybrid", (200000, 100000)),
    ],
)
def test_cpu_quota_of_fixtures(name, quota):
    assert cgroups.cpu_quota(groups(name), reader(name)) == quota


@pytest.mark.parametrize(
    "text, cpus", [("0-3\n", {0, 1, 2, 3}), ("2,5", {2, 5}), ("0-1,8", {0, 1, 8}), ("\n", set())]
)
def test_cpu_list(text, cpus):
    assert cgroups.parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "name, count",
    [("v1-quota", 8), ("v1-none", 2), ("v1-docker", 4), ("v2-namespace", 4), ("v2-nested", None)],
)
def test_cpuset_of_fixtures(name, count):
    assert cgroups.cpuset_cpus(groups(name), reader(name)) == count


def test_affinity_is_at_least_one():
    assert cgroups.affinity_cpus() >= 1


# -- memory and OOM kills ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, limit",
    [
        ("max\n", None),
        ("536870912\n", 536870912),
        ("9223372036854771712\n", None),  # v1's "no limit" (4 KiB pages)
        ("9223372036854710272\n", None),  # the same with 64 KiB pages
        ("0\n", None),
        ("lots\n", None),
    ],
)
def test_memory_limit_formats(text, limit):
    assert cgroups.parse_memory_limit(text) == limit


@pytest.mark.parametrize(
    "name, limit",
    [
        ("v1-quota", 512 * MIB),
        ("v1-none", None),
        ("v1-docker", 256 * MIB),
        ("v2-namespace", 512 * MIB),
        ("v2-nested", 512 * MIB),  # the pod's limit binds our "max" group
        ("hybrid", 1024 * MIB),
    ],
)
def test_memory_limit_of_fixtures(name, limit):
    assert cgroups.memory_limit(groups(name), reader(name)) == limit


@pytest.mark.parametrize(
    "name, kills",
    [
        ("v1-quota", 3),
        ("v1-none", None),  # before Linux 4.13 oom_control has no oom_kill line
        ("v1-docker", 0),
        ("v2-namespace", 2),
        ("v2-nested", 0),
        ("hybrid", 1),
    ],
)
def test_oom_kills_of_fixtures(name, kills):
    assert cgroups.oom_kills(groups(name), reader(name)) == kills


def test_oom_kills_without_cgroups(tmp_path):
    assert cgroups.oom_kills(read=FileReader(str(tmp_path))) is None


def test_oom_kill_line_is_found_among_others():
    assert cgroups.parse_oom_kill("oom 4\noom_kill 3\noom_group_kill 1\n") == 3
    assert cgroups.parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n") is None


# -- auto_workers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, affinity, memory, expected",
    [
        ("v1-quota", 8, None, (2, "cgroup cpu quota 150000/100000")),
        # Fewer CPUs to run on than the quota: the CPUs decide.
        ("v1-quota", 1, None, (1, "cpuset/affinity: 1 CPU")),
        ("v1-none", 8, None, (2, "cpuset/affinity: 2 CPUs")),  # the cpuset file: 2,5
        ("v1-docker", 4, None, (1, "cgroup cpu quota 50000/100000")),
        ("v2-namespace", 4, 160, (2, "cgroup cpu quota 150000/100000")),
        ("v2-nested", 8, 160, (3, "memory limit 512 MiB / --worker-memory 160")),
        ("v2-nested", 8, None, (4, "cgroup cpu quota 400000/100000")),
        # Both figures agree: both are named.
        (
            "v1-docker",
            4,
            300,
            (1, "cgroup cpu quota 50000/100000; memory limit 256 MiB / --worker-memory 300"),
        ),
        # A worker bigger than the limit still gets one worker.
        ("v2-nested", 8, 4096, (1, "memory limit 512 MiB / --worker-memory 4096")),
        ("hybrid", 8, 100.5, (2, "cgroup cpu quota 200000/100000")),
        (
            "v1-none",
            8,
            100,
            (2, "cpuset/affinity: 2 CPUs; no memory limit for --worker-memory 100"),
        ),
    ],
)
def test_auto_workers(name, affinity, memory, expected):
    assert cgroups.auto_workers(memory, read=reader(name), affinity=affinity) == expected


def test_auto_workers_without_cgroups_is_the_affinity(tmp_path):
    read = FileReader(str(tmp_path))
    assert cgroups.auto_workers(None, read=read, affinity=3) == (3, "cpuset/affinity: 3 CPUs")


def test_auto_workers_on_this_host_never_exceeds_the_affinity():
    count, reason = cgroups.auto_workers(None)
    assert 1 <= count <= cgroups.affinity_cpus() and reason


# -- the options ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", " auto ", 3, "3"])
def test_workers_option_takes_a_count_or_auto(value):
    assert config.convert_option("workers", value) in ("auto", 3)


@pytest.mark.parametrize("value", ["autox", "AUTO", "-1", 1.5, True])
def test_workers_option_refuses_the_rest(value):
    with pytest.raises(ValueError, match="'auto'"):
        config.convert_option("workers", value)


def test_auto_is_resolved_at_each_build(monkeypatch):
    # Each build (start, HUP) asks again: a container's limits can change while we run.
    answers = iter([(2, "cgroup cpu quota 150000/100000"), (1, "cpuset/affinity: 1 CPU")])
    asked = []

    def fake(worker_memory):
        asked.append(worker_memory)
        return next(answers)

    monkeypatch.setattr(config, "resolve_auto_workers", fake)
    cli = {"app": "app.py", "workers": "auto", "worker_memory": 160.0}
    settings, notes = config.build_settings(cli)
    assert (settings.workers, settings.workers_auto) == (2, "cgroup cpu quota 150000/100000")
    assert notes == ["workers auto = 2 (cgroup cpu quota 150000/100000)"]
    settings, notes = config.build_settings(cli)
    assert settings.workers == 1 and notes == ["workers auto = 1 (cpuset/affinity: 1 CPU)"]
    assert asked == [160.0, 160.0]


def test_worker_memory_without_auto_is_said_to_be_ignored():
    settings, notes = config.build_settings({"app": "app.py", "workers": 3, "worker_memory": 9})
    assert settings.workers == 3 and settings.workers_auto is None
    assert notes == ["--worker-memory is used only with --workers auto; ignored"]
