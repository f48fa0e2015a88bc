"""A program killed with SIGKILL while its executor's workers are alive.

Usage::

    python parent_death.py BACKEND OPTIONS_JSON

Creates an executor, makes sure each of its two workers has run a task,
then prints the pids of those workers (``WORKERS [...]``) and of every
process it started (``TREE [...]``, the fork server and resource tracker
included) and ``READY``, and waits. tests/test_parent_death.py then
SIGKILLs it: no cleanup runs, and every one of those processes must end on
its own.
"""

from __future__ import annotations

import json
import sys
import time

import psutil

import executors
from executors.testing import tasks

#: Rounds of two concurrent tasks before giving up on seeing both workers.
ROUNDS = 20


def main(backend: str, options: dict[str, object]) -> None:
    ex = executors.create(backend, **options)
    workers: set[int] = set()
    for _ in range(ROUNDS):
        # Two tasks that overlap in time land on two different workers.
        futures = [ex.submit(tasks.sleep_then_pid, 0.3) for _ in range(2)]
        workers.update(f.result(timeout=60) for f in futures)
        if len(workers) >= 2:
            break
    tree = [p.pid for p in psutil.Process().children(recursive=True)]
    print("WORKERS", json.dumps(sorted(workers)), flush=True)
    print("TREE", json.dumps(sorted(tree)), flush=True)
    print("READY", flush=True)
    time.sleep(600)  # the test kills us long before


# The guard matters: forkserver and spawn workers import the main module.
if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
