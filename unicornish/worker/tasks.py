"""The task worker kind (--app): call the app's worker_start(worker) in a loop.

One call is one task: counted, timed, and watched by --timeout. The app waits
for its own work (worker.accept() on the listeners, a queue, a sleep) inside
the call. A call that only waited is no task: its accept() returned None, or
it said so with worker.no_task() (after a wait in worker.idle() that got
nothing); it is neither counted nor timed.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable

from unicornish.app import App, CompiledApp, load_app
from unicornish.protocol import EXIT_OK, EXIT_TASK_FAILED, REPORT_WARM, TASK_DURATION_BUCKETS
from unicornish.scoreboard import BUSY
from unicornish.worker.process import TURN_SERVED, TURN_TASK, TURN_WAITED, Worker, next_mark

_WAITED_ONLY = TURN_WAITED | TURN_SERVED

# How often the loop compares os.getppid() with its master: a system call
# costs as much as the rest of an empty task, so once per millisecond, not per
# task (the parent-death signal is the first line; this is for apps that
# replaced our QUIT handler).
_PARENT_CHECK_SECONDS = 0.001


def load(spec: str, compiled: CompiledApp | None) -> App:
    return load_app(spec, compiled)


def serve(worker: Worker, app: App, ready: Callable[[], None]) -> int:
    ready()
    worker_start = app.entry
    # Locals, not attributes: this loop runs a million times a second.
    board = worker.board
    beat = board.beat
    tasks = board.tasks
    counts = board.durations
    duration_sum = board.duration_sum
    bounds = TASK_DURATION_BUCKETS
    smallest = bounds[0]
    bucket_of = bisect.bisect_left  # `le` is inclusive
    started = worker.task_start
    turn = worker.turn
    # Reset before `stopping` is read: a stop asked for after this is seen.
    turn[0] = TURN_TASK  # an accept() in after_fork is no turn of ours
    clock = time.monotonic
    getppid = os.getppid
    master_pid = worker.master_pid
    limit = worker.max_tasks or 0
    refork_at = worker.refork_at
    done = int(tasks[0])
    # One comparison per task covers both marks: the nearer one comes first.
    mark = next_mark(done, limit, refork_at)
    busy_for = float(duration_sum[0])
    record = board.record_durations
    board.state[0] = BUSY
    now = clock()
    check_parent_at = now + _PARENT_CHECK_SECONDS
    try:
        if worker.stopping:
            return EXIT_OK
        # One test per turn, `turn[0]`, for both what the turn was and a stop:
        # setting `stopping` sets a bit there too. So a stop is seen right
        # after the turn it came in (or after the bookkeeping of the turn
        # before), not at the top of the loop.
        while True:
            beat[0] = started[0] = now
            worker_start(worker)
            # One clock read per turn: a turn's end is the next one's start.
            now = clock()
            if turn[0]:  # seldom: a wait in the turn said what it was, or a stop
                said = turn[0]
                turn[0] = TURN_TASK
                # `stopping` read after the reset: a stop set in between is not lost.
                if said & _WAITED_ONLY == TURN_WAITED:
                    if worker.stopping:
                        break
                    if now >= check_parent_at:
                        check_parent_at = now + _PARENT_CHECK_SECONDS
                        if getppid() != master_pid:
                            worker.check_master()
                    continue
                if worker.stopping:
                    mark = done + 1  # counted below; the mark's test ends the loop
            done += 1
            tasks[0] = done
            if record:
                took = now - started[0]
                # Tiny tasks, where this loop's own cost shows most, skip the search.
                if took <= smallest:
                    counts[0] += 1.0
                else:
                    counts[bucket_of(bounds, took)] += 1.0
                busy_for += took
            if now >= check_parent_at:
                # The sum is stored at most once per millisecond too, not per task:
                # a SIGKILL may lose the last millisecond of it, never a count.
                duration_sum[0] = busy_for
                check_parent_at = now + _PARENT_CHECK_SECONDS
                if getppid() != master_pid:
                    worker.check_master()
                    if worker.stopping:
                        mark = done
            if done == mark:
                if done == refork_at:
                    worker.report(REPORT_WARM)
                if done == limit:
                    worker.log.info(
                        "worker[%d] reached --max-tasks after %d tasks", worker.nr, done
                    )
                    break
                if worker.stopping:
                    break
                mark = next_mark(done, limit, refork_at)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        worker.log.info("worker[%d] worker_start called exit(%s)", worker.nr, exc.code)
        return code
    except BaseException:  # noqa: BLE001 - any escape ends this worker; the master replaces it
        worker.log.exception("worker[%d] worker_start raised; exiting", worker.nr)
        return EXIT_TASK_FAILED
    finally:
        duration_sum[0] = busy_for
    return EXIT_OK
