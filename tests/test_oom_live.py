"""A worker killed by the kernel's OOM killer, for real: the master runs in a memory
cgroup of its own (200 MiB, made below this test's group, as tests/test_cgroups_live.py
does), a worker allocates past the limit, and the master must say `(out of memory)`
and count the death as `oom`, while the other worker and the master live on.

Needs root. The count is read from a scrape taken inside the master (a config file's
before_fork hook, see tests/test_appmetrics_live.py) when the victim is replaced."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import MIB, SCRAPING_CONFIG, assert_inside, scrape, set_memory_limit

from unicornish.host import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")

# worker[0] eats memory once the flag file appears (and removes it first, so that
# its replacement does not do it again); each MiB is written, so it really costs.
HOG_APP = """
import os, time
FLAG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hog")

def worker_start(worker):
    if worker.nr == 0 and os.path.exists(FLAG):
        os.unlink(FLAG)
        chunks = []
        for _ in range(1024):
            chunks.append(b"x" * (1024 * 1024))
        print("survived", flush=True)
    time.sleep(0.05)
"""


def test_a_worker_killed_by_the_oom_killer_is_logged_and_counted(groups, tmp_path):  # noqa: F811
    memory = groups.make("memory")
    set_memory_limit(memory, 200 * MIB)
    if cgroups.oom_kills_at(str(memory.path), memory.version) is None:
        pytest.skip(f"this kernel counts no oom_kill in {memory.path} (Linux < 4.13)")
    (tmp_path / "app.py").write_text(HOG_APP)
    (tmp_path / "conf.py").write_text(SCRAPING_CONFIG)
    run = groups.start_master([memory], "-c", "conf.py", "--workers", "2")
    pids = run.wait_ready(2)  # scrapes 1 and 2: before the two forks
    assert_inside([run.pid, *pids.values()], memory)
    (tmp_path / "hog").touch()
    log = run.wait_log(
        rf"reaped pid={pids[0]} worker\[0\] status=killed by SIGKILL \(out of memory\)\n",
        timeout=60,
    )
    assert "survived" not in run.stdout()
    assert cgroups.oom_kills_at(str(memory.path), memory.version) == 1
    found = scrape(tmp_path, 3)  # taken just before the replacement's fork
    assert found['unicornish_worker_exits_total{cause="oom"}'] == 1
    assert found['unicornish_worker_exits_total{cause="signal"}'] == 0
    new = run.wait_ready(2)
    assert new[1] == pids[1] and new[0] != pids[0]  # only the hog died
    assert log.count("(out of memory)") == 1
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(20) == 0
