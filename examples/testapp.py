"""The original tool's demo: each task sleeps a few random seconds.

make run        # or: bin/unicornish --app examples/testapp.py --workers 2
"""

import os
import random
import time


def after_fork(worker):
    print(f"worker[{worker.nr}] pid={os.getpid()} do this after forking", flush=True)


def worker_start(worker):
    seconds = random.randint(1, 5)
    print(
        f"worker[{worker.nr}] pid={os.getpid()} Performing a task: sleeping for {seconds} seconds",
        flush=True,
    )
    time.sleep(seconds)
