"""A program killed while every worker of its executor is running a task.

Usage::

    python parent_death_busy.py BACKEND OPTIONS_JSON KIND FOLDER

Creates an executor and submits twice as many endless tasks as it has
workers, of one ``KIND``: ``python`` (a pure-Python busy loop, which gives
up the GIL only at the interpreter's switch interval) or ``sleep``
(``time.sleep``, blocked in C). Each task, once running, leaves a file
named after its worker's pid in ``FOLDER``. Once every worker runs one, it
prints the pids of those workers (``WORKERS [...]``) and of every process
it started (``TREE [...]``), then ``READY``, and waits for
tests/test_parent_death.py to kill it (SIGKILL, or SIGTERM with no handler):
no cleanup runs, and every one of those processes must end on its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

import executors

#: How long a task runs if nothing kills it: far beyond any test's bound, and
#: still an end, should the test's own teardown miss a survivor.
TASK_SECONDS = 300.0
#: Seconds to wait for every worker to be running a task (less than the
#: test waits, so that a failure is reported).
START_SECONDS = 80.0


def _running(folder: str) -> None:
    # A file created under a hidden name, then renamed: whoever lists the
    # folder sees the pid whole or not at all.
    pid = str(os.getpid())
    tmp = Path(folder, "." + pid)
    tmp.write_text("")
    tmp.rename(Path(folder, pid))


def running_pids(folder: str) -> list[int]:
    """The pids of the workers that have started a task."""
    return sorted(int(p.name) for p in Path(folder).iterdir() if p.name.isdigit())


def spin(folder: str) -> None:
    """Loop in Python bytecode until killed."""
    _running(folder)
    deadline = time.monotonic() + TASK_SECONDS
    n = 0
    while time.monotonic() < deadline:
        n += 1


def nap(folder: str) -> None:
    """Sleep in C until killed."""
    _running(folder)
    time.sleep(TASK_SECONDS)


def main(backend: str, options: dict[str, Any], kind: str, folder: str) -> None:
    workers = int(options["max_workers"])
    task = {"python": spin, "sleep": nap}[kind]
    ex = executors.create(backend, **options)
    # More tasks than workers: whichever worker a backend hands the first
    # ones to, each worker gets one, and some wait in the queue behind them.
    futures = [ex.submit(task, folder) for _ in range(2 * workers)]
    deadline = time.monotonic() + START_SECONDS
    while True:
        running = running_pids(folder)
        if len(running) >= workers:
            break
        done = [f for f in futures if f.done()]
        if done or time.monotonic() > deadline:
            print("FAILED", running, [f.exception() for f in done], flush=True)
            # Not a normal exit, which would wait for the endless tasks.
            os._exit(1)
        time.sleep(0.05)
    tree = [p.pid for p in psutil.Process().children(recursive=True)]
    print("WORKERS", json.dumps(running), flush=True)
    print("TREE", json.dumps(sorted(tree)), flush=True)
    print("READY", flush=True)
    time.sleep(600)  # the test kills us long before


# The guard matters: forkserver and spawn workers import the main module.
if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
