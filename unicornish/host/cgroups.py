"""What the container (or systemd slice) lets this process use: CPUs, memory, OOM kills.

os.cpu_count() tells the host's CPUs, not the share a container may use, so
`--workers auto` reads the limits from the process's own cgroups instead.
Both hierarchies are supported, as hosts run either (or both, "hybrid"):

- v1: one mount per controller (or per group of controllers), and one line
  per hierarchy in /proc/self/cgroup, `N:cpu,cpuacct:/path`;
- v2: one unified mount and one line, `0::/path`.

The path in /proc/self/cgroup is relative to the hierarchy's root as this
process's cgroup namespace sees it, and what is mounted may be a subtree of
it (a bind mount, a container without a cgroup namespace): the mount's root
field in /proc/self/mountinfo tells which part, so both files are read.

Every function takes a `Reader` (path -> text, or None when it cannot be
read), so the unit tests run them against fixture trees.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Reader = Callable[[str], str | None]

# v1 reports "no limit" as the largest page-aligned value near 2**63, which
# depends on the page size; anything this big is not a real limit.
UNLIMITED_BYTES = 1 << 60
MIB = 1024 * 1024


class FileReader:
    """Reads absolute paths below `root`: "/" on a live host, a fixture tree in tests."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def __call__(self, path: str) -> str | None:
        full = os.path.join(self.root, path.lstrip("/"))
        try:
            with open(full, encoding="ascii", errors="replace") as handle:
                return handle.read()
        except OSError:  # missing file, or a controller this kernel lacks
            return None


# -- where are our cgroups? -------------------------------------------------------


@dataclass(frozen=True)
class Membership:
    """One line of /proc/self/cgroup: the controllers of a hierarchy and our path in it."""

    version: int  # 1 or 2
    controllers: frozenset[str]
    path: str


@dataclass(frozen=True)
class Mount:
    """A cgroup mount from /proc/self/mountinfo: which subtree (root) is where (mountpoint)."""

    version: int
    controllers: frozenset[str]
    root: str
    mountpoint: str


@dataclass(frozen=True)
class Place:
    """Our group's directory in one hierarchy, and the mount point above which we cannot go."""

    version: int
    directory: str
    top: str

    def chain(self) -> Iterator[str]:
        """Our group, then each parent up to the mount point: a parent's limit binds us too."""
        directory = self.directory
        while True:
            yield directory
            if directory == self.top or len(directory) <= len(self.top):
                return
            directory = posixpath.dirname(directory)


@dataclass(frozen=True)
class Cgroups:
    """Where each v1 controller's group is, and the v2 group, if any."""

    v1: dict[str, Place] = field(default_factory=dict)
    v2: Place | None = None

    def place(self, controller: str) -> Place | None:
        """A controller bound to a v1 hierarchy is there; otherwise it can only be in v2."""
        return self.v1.get(controller, self.v2)


def parse_proc_cgroup(text: str) -> list[Membership]:
    found = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        number, names, path = parts
        if number == "0" and names == "":
            found.append(Membership(2, frozenset(), path))
        else:
            # name=systemd and the like are hierarchies without a controller.
            controllers = frozenset(n for n in names.split(",") if n and "=" not in n)
            if controllers:
                found.append(Membership(1, controllers, path))
    return found


def _unescape(field_text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal escapes."""
    out, i = [], 0
    while i < len(field_text):
        chunk = field_text[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts: `id parent maj:min root mountpoint opts [tags] - fstype src superopts`."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields_left, fields_right = left.split(), right.split()
        if len(fields_left) < 5 or len(fields_right) < 3:
            continue
        fstype = fields_right[0]
        root, mountpoint = _unescape(fields_left[3]), _unescape(fields_left[4])
        if fstype == "cgroup2":
            mounts.append(Mount(2, frozenset(), root, mountpoint))
        elif fstype == "cgroup":
            # The controllers are among the super options (rw,cpu,cpuacct).
            options = frozenset(fields_right[2].split(","))
            mounts.append(Mount(1, options, root, mountpoint))
    return mounts


def _inside(root: str, path: str) -> str | None:
    """Our path below a mount's root, or None when the mount does not contain our group."""
    root = root.rstrip("/") or "/"
    if root == "/":
        return path
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root) :]
    return None


def locate(membership: Membership, mounts: list[Mount]) -> Place | None:
    """Our group's directory: the mount of that hierarchy whose root holds our path.

    With several (bind) mounts of one hierarchy, the deepest root that still
    holds our path wins; a path outside every mounted root (a process moved
    out of its cgroup namespace's root shows `/../x`) cannot be found."""
    best: tuple[int, Place] | None = None
    for mount in mounts:
        if mount.version != membership.version:
            continue
        if membership.version == 1 and not membership.controllers <= mount.controllers:
            continue
        below = _inside(mount.root, membership.path)
        if below is None or "/.." in below:
            continue
        directory = posixpath.normpath(posixpath.join(mount.mountpoint, below.lstrip("/")))
        depth = len(mount.root.rstrip("/"))
        if best is None or depth > best[0]:
            best = (depth, Place(mount.version, directory, mount.mountpoint))
    return best[1] if best else None


def discover(proc_cgroup: str, mountinfo: str) -> Cgroups:
    mounts = parse_mountinfo(mountinfo)
    v1: dict[str, Place] = {}
    v2: Place | None = None
    for membership in parse_proc_cgroup(proc_cgroup):
        place = locate(membership, mounts)
        if place is None:
            continue
        if membership.version == 2:
            v2 = place
        else:
            for controller in membership.controllers:
                v1[controller] = place
    return Cgroups(v1, v2)


def current(read: Reader | None = None) -> Cgroups:
    """This process's cgroups (an empty Cgroups where /proc cannot tell)."""
    read = read or FileReader()
    return discover(read("/proc/self/cgroup") or "", read("/proc/self/mountinfo") or "")


def _file(place: Place, directory: str, v1_name: str, v2_name: str) -> str:
    return posixpath.join(directory, v1_name if place.version == 1 else v2_name)


# -- CPU ----------------------------------------------------------------------------


def parse_cpu_max(text: str) -> tuple[int, int] | None:
    """v2 cpu.max: "max 100000" (no quota) or "150000 100000" (quota, period in µs)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return (quota, period) if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str | None) -> tuple[int, int] | None:
    """v1 cpu.cfs_quota_us (-1: no quota) and cpu.cfs_period_us."""
    try:
        quota = int(quota_text.strip())
        period = int((period_text or "100000").strip())
    except ValueError:
        return None
    return (quota, period) if quota > 0 and period > 0 else None


def _quota_at(place: Place, directory: str, read: Reader) -> tuple[int, int] | None:
    if place.version == 2:
        text = read(posixpath.join(directory, "cpu.max"))
        return parse_cpu_max(text) if text is not None else None
    quota = read(posixpath.join(directory, "cpu.cfs_quota_us"))
    if quota is None:
        return None
    return parse_cfs(quota, read(posixpath.join(directory, "cpu.cfs_period_us")))


def cpu_quota(groups: Cgroups, read: Reader) -> tuple[int, int] | None:
    """The tightest (quota, period) of our group and its parents, or None without one."""
    place = groups.place("cpu")
    if place is None:
        return None
    tightest: tuple[int, int] | None = None
    for directory in place.chain():
        found = _quota_at(place, directory, read)
        if found and (tightest is None or found[0] / found[1] < tightest[0] / tightest[1]):
            tightest = found
    return tightest


def quota_cpus(quota: tuple[int, int]) -> int:
    """1.5 CPUs of time is work for 2 processes: round up, and never below 1."""
    return max(1, math.ceil(quota[0] / quota[1]))


def parse_cpu_list(text: str) -> set[int]:
    """A cpuset list: "0-3,8,10-11"; empty means none given."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        if not item:
            continue
        first, _, last = item.partition("-")
        try:
            cpus.update(range(int(first), int(last or first) + 1))
        except ValueError:
            return set()
    return cpus


def cpuset_cpus(groups: Cgroups, read: Reader) -> int | None:
    """How many CPUs our cpuset holds (the effective list: what parents allow too)."""
    place = groups.place("cpuset")
    if place is None:
        return None
    name = _file(place, place.directory, "cpuset.effective_cpus", "cpuset.cpus.effective")
    text = read(name)
    if text is None and place.version == 1:
        text = read(posixpath.join(place.directory, "cpuset.cpus"))  # older kernels
    cpus = parse_cpu_list(text or "")
    return len(cpus) or None


def affinity_cpus() -> int:
    """The CPUs the scheduler lets us run on (the kernel keeps this inside the cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


# -- memory -------------------------------------------------------------------------


def parse_memory_limit(text: str) -> int | None:
    """v2 memory.max ("max" or bytes) or v1 memory.limit_in_bytes (huge: none)."""
    value = text.strip()
    if value == "max":
        return None
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if 0 < limit < UNLIMITED_BYTES else None


def memory_limit(groups: Cgroups, read: Reader) -> int | None:
    """The lowest memory limit of our group and its parents, in bytes, or None."""
    place = groups.place("memory")
    if place is None:
        return None
    lowest: int | None = None
    for directory in place.chain():
        text = read(_file(place, directory, "memory.limit_in_bytes", "memory.max"))
        limit = parse_memory_limit(text) if text is not None else None
        if limit is not None and (lowest is None or limit < lowest):
            lowest = limit
    return lowest


def parse_oom_kill(text: str) -> int | None:
    """The `oom_kill N` line of v2 memory.events or v1 memory.oom_control (Linux >= 4.13)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def oom_kills_at(directory: str, version: int, read: Reader | None = None) -> int | None:
    """OOM kills counted in one group directory (v2 counts its subgroups' too)."""
    read = read or FileReader()
    text = read(
        posixpath.join(directory, "memory.oom_control" if version == 1 else "memory.events")
    )
    return parse_oom_kill(text) if text is not None else None


def oom_kills(groups: Cgroups | None = None, read: Reader | None = None) -> int | None:
    """OOM kills in our memory group so far, or None where no hierarchy counts them.

    A worker that died of SIGKILL while this number went up was most likely
    killed by the OOM killer (the master compares it before and after)."""
    read = read or FileReader()
    groups = groups if groups is not None else current(read)
    place = groups.place("memory")
    if place is None:
        return None
    found = oom_kills_at(place.directory, place.version, read)
    if found is None and place.version == 1 and groups.v2 is not None:
        # Hybrid host: memory may be counted in the unified tree instead.
        found = oom_kills_at(groups.v2.directory, 2, read)
    return found


# -- --workers auto -----------------------------------------------------------------


def _plural(n: int) -> str:
    return f"{n} CPU" if n == 1 else f"{n} CPUs"


def _mib(nbytes: int) -> str:
    mib = nbytes / MIB
    return f"{mib:.0f}" if mib == int(mib) else f"{mib:.1f}"


def _number(value: float) -> str:
    return f"{value:g}"


def auto_workers(
    worker_memory_mb: float | None,
    *,
    read: Reader | None = None,
    affinity: int | None = None,
) -> tuple[int, str]:
    """How many workers fit, and why: CPUs first, then memory if a worker's size is given.

    The CPU figure is the cgroup quota rounded up, unless the CPUs we may
    run on are fewer; without a quota it is those CPUs. With
    --worker-memory, floor(limit / worker size) caps it (at least 1: a
    master with no worker serves nothing)."""
    read = read or FileReader()
    groups = current(read)
    cpus = affinity if affinity is not None else affinity_cpus()
    cpuset = cpuset_cpus(groups, read)
    if cpuset is not None and cpuset < cpus:
        cpus = cpuset
    count, reason = cpus, f"cpuset/affinity: {_plural(cpus)}"
    quota = cpu_quota(groups, read)
    if quota is not None and quota_cpus(quota) <= cpus:
        count, reason = quota_cpus(quota), f"cgroup cpu quota {quota[0]}/{quota[1]}"
    if worker_memory_mb is None:
        return count, reason
    limit = memory_limit(groups, read)
    if limit is None:
        return count, reason + f"; no memory limit for --worker-memory {_number(worker_memory_mb)}"
    fit = max(1, math.floor(limit / (worker_memory_mb * MIB)))
    memory_reason = f"memory limit {_mib(limit)} MiB / --worker-memory {_number(worker_memory_mb)}"
    if fit < count:
        return fit, memory_reason
    if fit == count:
        return count, f"{reason}; {memory_reason}"
    return count, reason
