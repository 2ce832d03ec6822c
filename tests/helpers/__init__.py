"""What several test files use, defined once: `from helpers import Run, wait_until`.

- processes: start and watch bin/unicornish from outside (Run, wait_until,
  gone, run_cli, one_error_line, ...);
- apps: app sources more than one file runs;
- metrics: scrape the master (HTTP, `ctl metrics`, files) and `ctl`;
- cgroups: child cgroups with limits, and a launcher into them;
- notify: systemd's end of NOTIFY_SOCKET;
- asgi: --asgi's Starlette app, wrk and a plain GET;
- wsgi: --wsgi's Flask and Django apps, raw exchanges, wrk with failures counted.

The fixtures built on them (`start`, `app_file`, `groups`) are in conftest.py,
which also re-exports these names for tests that import them from there.
"""

from .apps import BROKEN_APP, loop_app, slow_boot_app, slow_task_app, write_app
from .asgi import APP_DIR, copy_asgi_app, get, start_asgi, wrk, wrk_result
from .cgroups import (
    LAUNCHER,
    MIB,
    Group,
    Groups,
    assert_inside,
    set_cpu_quota,
    set_memory_limit,
    set_one_cpu,
)
from .disk import fill
from .metrics import (
    SCRAPING_CONFIG,
    ctl,
    ctl_metrics,
    free_port,
    http,
    samples,
    scrape,
)
from .notify import NotifyListener
from .processes import (
    BIN,
    EXAMPLES,
    PY,
    ROOT,
    Run,
    Seen,
    alive,
    children,
    cpu_seconds,
    gone,
    let_pass,
    new_master,
    one_error_line,
    read_pid,
    run_cli,
    stop_master,
    unshare_or_skip,
    wait_until,
    worker_children,
)
from .wsgi import WRK, Load, LoadResult, exchange, listening_port, statuses, wsgi_site

__all__ = [
    "Load",
    "LoadResult",
    "exchange",
    "listening_port",
    "statuses",
    "wsgi_site",
    "APP_DIR",
    "WRK",
    "copy_asgi_app",
    "get",
    "start_asgi",
    "wrk",
    "wrk_result",
    "BIN",
    "BROKEN_APP",
    "EXAMPLES",
    "LAUNCHER",
    "MIB",
    "PY",
    "ROOT",
    "SCRAPING_CONFIG",
    "Group",
    "Groups",
    "NotifyListener",
    "Run",
    "Seen",
    "alive",
    "assert_inside",
    "children",
    "cpu_seconds",
    "ctl",
    "ctl_metrics",
    "fill",
    "free_port",
    "gone",
    "http",
    "let_pass",
    "loop_app",
    "new_master",
    "one_error_line",
    "read_pid",
    "run_cli",
    "samples",
    "scrape",
    "set_cpu_quota",
    "set_memory_limit",
    "set_one_cpu",
    "slow_boot_app",
    "slow_task_app",
    "stop_master",
    "unshare_or_skip",
    "wait_until",
    "worker_children",
    "write_app",
]
