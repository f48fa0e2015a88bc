"""Warm recycling in the stdlib pools: the replacement is ready in time.

A pool with ``max_tasks_per_child`` keeps its throughput only if each
worker's replacement has started before the worker leaves (docs/workers.md,
"Recycling"). These tests check that it has, and that the fork server
forks workers that do not import the package again.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import psutil
import pytest

import executors
from executors._workers import _pools
from executors.testing import tasks, worker_tasks

RECYCLING = ["process", "mp_pool", "queue"]
if sys.version_info < (3, 11):  # the process backend recycles from 3.11
    RECYCLING.remove("process")


def _task_with_siblings(seconds: float) -> tuple[int, list[int]]:
    """Sleep, then return this worker's pid and its live siblings' pids."""
    time.sleep(seconds)
    parent = psutil.Process(os.getppid())
    return os.getpid(), [child.pid for child in parent.children()]


@pytest.mark.slow
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
    # The backend's module, or its worker's (the queue's workers import
    # only executors.backends.queue._worker).
    assert f"'executors.backends.{backend}" in preloaded
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


def _timed_who(seconds: float) -> tuple[int | None, int, float, float]:
    """``(worker_id(), pid, start, end)`` of a task that sleeps ``seconds``."""
    start = time.monotonic()  # one clock for every process of the machine
    time.sleep(seconds)
    return executors.worker_id(), os.getpid(), start, time.monotonic()


def test_queue_workers_running_at_once_never_share_an_identity() -> None:
    # Every task retires its worker: a spare waits with the identity of
    # the worker it replaces, and must not run a task before that worker's
    # last one has returned.
    with executors.create("queue", max_workers=2, max_tasks_per_child=1) as ex:
        rows = [
            future.result(timeout=60)
            for future in [ex.submit(_timed_who, 0.05) for _ in range(16)]
        ]
    assert len({pid for _, pid, _, _ in rows}) == 16
    assert {wid for wid, _, _, _ in rows} <= {0, 1}
    for a, b in itertools.combinations(rows, 2):
        overlap = a[2] < b[3] and b[2] < a[3]
        assert not (overlap and a[0] == b[0]), (a, b)


def test_queue_a_spare_takes_over_from_a_worker_that_crashes() -> None:
    # The worker is half-way through its tasks (its spare has started)
    # when a task kills it: the spare takes its identity at once, and the
    # pool goes on with one worker.
    with executors.create("queue", max_workers=1, max_tasks_per_child=4) as ex:
        first = [ex.submit(worker_tasks.who).result(timeout=60) for _ in range(2)]
        crashed = ex.submit(tasks.exit_abruptly, 3)
        with pytest.raises(executors.WorkerCrashedError):
            crashed.result(timeout=60)
        after = [ex.submit(worker_tasks.who).result(timeout=60) for _ in range(6)]
    (old_pid,) = {pid for _, pid, _ in first}
    assert all(wid == 0 for wid, _, _ in first + after)
    pids = [pid for _, pid, _ in after]
    assert old_pid not in pids
    # 6 tasks at 4 per worker: the spare, then its own replacement.
    assert len(set(pids)) == 2, pids


def test_queue_memory_recycling_runs_what_was_sent_ahead_elsewhere() -> None:
    # Tiny tasks are sent ahead; the worker that leaves over its memory
    # limit runs none of them: they run on its replacement, none fails.
    # A worker starts far below the limit (as in the shipped recycling
    # check), and one task takes it far above.
    with executors.create("queue", max_workers=1, max_memory_per_child="150MB") as ex:
        list(ex.map(tasks.identity, range(50)))  # the pool learns they are short
        grow = ex.submit(worker_tasks.keep_megabytes, 200)
        rest = [ex.submit(worker_tasks.who) for _ in range(30)]
        grown_pid = grow.result(timeout=60)[0]
        pids = {future.result(timeout=60)[1] for future in rest}
    assert grown_pid not in pids
