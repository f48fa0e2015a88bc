"""Warm recycling in the stdlib pools: the replacement is ready in time.

A pool with ``max_tasks_per_child`` keeps its throughput only if each
worker's replacement has started before the worker leaves (docs/workers.md,
"Recycling"). These tests check that it has, and that the fork server
forks workers that do not import the package again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

import executors
from executors._workers import _pools

RECYCLING = ["process", "mp_pool"]
if sys.version_info < (3, 11):  # the process backend recycles from 3.11
    RECYCLING.remove("process")


def _task_with_siblings(seconds: float) -> tuple[int, list[int]]:
    """Sleep, then return this worker's pid and its live siblings' pids."""
    time.sleep(seconds)
    parent = psutil.Process(os.getppid())
    return os.getpid(), [child.pid for child in parent.children()]


@pytest.mark.parametrize("backend", RECYCLING)
def test_the_replacement_starts_before_the_recycled_worker_leaves(
    backend: str,
) -> None:
    # One worker, four tasks each: the worker says "soon" after its second
    # task, so its replacement has two tasks (a second) to start; it is
    # alive, a sibling, while the old worker runs its last task.
    per_child, seconds = 4, 0.5
    with executors.create(backend, max_workers=1, max_tasks_per_child=per_child) as ex:
        results = [
            ex.submit(_task_with_siblings, seconds) for _ in range(per_child + 1)
        ]
        rows = [future.result(timeout=60) for future in results]
    first, _ = rows[0]
    assert [pid for pid, _ in rows[:per_child]] == [first] * per_child
    replacement, _ = rows[per_child]
    assert replacement != first
    _, siblings_at_last_task = rows[per_child - 1]
    assert replacement in siblings_at_last_task, (
        f"worker {replacement} replaced {first} but had not started while "
        f"{first} ran its last task (siblings then: {siblings_at_last_task})"
    )


@pytest.mark.parametrize("backend", RECYCLING)
def test_the_fork_server_imports_the_backend_before_forking(backend: str) -> None:
    # In a fresh interpreter: the fork server is one per process, and the
    # list of what it preloads only counts before it starts.
    code = (
        "import multiprocessing.forkserver as fs, executors\n"
        "if __name__ == '__main__':\n"
        f"    with executors.create({backend!r}, max_workers=1) as ex:\n"
        "        ex.submit(abs, -1).result()\n"
        "    print(sorted(fs._forkserver._preload_modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    preloaded = done.stdout.strip()
    assert f"'executors.backends.{backend}'" in preloaded
    assert "'__main__'" in preloaded  # the stdlib's own entry stays


def test_a_worker_says_soon_by_its_pace_when_half_its_tasks_leave_too_little_time() -> (
    None
):
    # In this process, as a worker would: 25 tasks of 1 ms leave 12 ms of
    # lead at the half-way mark, far less than a worker takes to start.
    from executors._workers._context import WorkerContext, enter_thread, leave_thread

    context = WorkerContext(index=0, max_tasks=25)
    enter_thread(context)
    try:
        due = []
        for _ in range(25):
            time.sleep(0.001)
            context.after_task()
            due.append(_pools.replacement_due())
        # The second task gives a pace; the spec's own rule says so at 13.
        assert due.index(True) == 1
    finally:
        leave_thread()
