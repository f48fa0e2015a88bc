"""Warm recycling in the stdlib's pools: the pieces ``process`` and ``mp_pool`` plug in.

A worker decides after each task whether it must go (:func:`after_task`,
run by ``run_call``: over ``max_memory_per_child``, or at
``max_tasks_per_child``), and earlier that it will go soon. The stdlib
pools replace a worker only once it has exited, so a recycling pool
would wait for a cold start at every replacement (a ``max_tasks_per_child
= 25`` pool fell from 3,956 to 237 tasks/s in one public report). Here
the replacement starts when the worker says "soon", as a spare beyond
``max_workers``; when the old worker leaves, the pool counts the spare and
starts nothing.

``ProcessPoolExecutor`` (3.11+)::

    worker: task ─▶ after_task() ─▶ _ResultItem(exit_pid=-pid) once "soon"
                                    _ResultItem(exit_pid=pid), then exit, when leaving
    manager thread: exit_pid < 0 ─▶ start a spare now (this thread alone adds workers)
                    exit_pid > 0 ─▶ out of the pool, not joined: the spare has its slot

``multiprocessing.Pool``: the loop ends after the task that made the
worker leave (:class:`UntilRecycled`); ``WorkerSettings(on_leaving=)``
calls :meth:`SparePoolMixin.request_spare`, and the worker handler thread
starts the spare.

"Soon" comes early enough only if the spare has started by the time the
old worker leaves. The spec's own rule (half of ``max_tasks_per_child``)
leaves 12 tasks of lead at 25: 15 ms for 1 ms tasks, less than a worker
takes to start on a loaded machine. :func:`replacement_due` adds a rule
by time: the worker's pace so far says when it will reach its limit.
"""

from __future__ import annotations

import concurrent.futures.process
import multiprocessing.pool
import os
import threading
import time
from collections.abc import MutableMapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import _ExecutorManagerThread, _threads_wakeups
from typing import Any

from ._context import WorkerContext, current, leave_process, recycling

# Typed as the running Python has it: typeshed's stubs for 3.10 have no
# exit_pid.
_stdlib: Any = concurrent.futures.process

__all__ = [
    "RecyclingProcessPool",
    "SparePoolMixin",
    "UntilRecycled",
    "recycling_process_worker",
    "replacement_due",
]

#: A worker that will reach ``max_tasks_per_child`` within about this long,
#: at the pace of its tasks so far, has its replacement started now: about
#: what a worker takes to start on a loaded machine (tens of milliseconds
#: forked from a fork server that preloaded the package, most of a second
#: under spawn). A spare that started early waits, idle, for the slot.
LEAD_SECONDS = 1.0

# This process's worker context, and when its first task ended.
_first_task: tuple[WorkerContext, float] | None = None


def replacement_due(announce: bool = False) -> bool:
    """After a task: whether this worker's replacement should start now.

    True once the worker said it will leave soon, by the spec's rules
    (``after_task``) or by its pace: the tasks it has left, at the mean
    time per task since its first ended, take less than
    :data:`LEAD_SECONDS`. With ``announce``, a worker that says so here
    first tells the caller as ``after_task`` does (for a pool that learns
    it through ``WorkerSettings(on_leaving=)``); either way it is said
    once.
    """
    global _first_task
    context = current()
    if context is None:
        return False
    if context.soon or context.leaving:
        return context.soon
    limit = context.max_tasks
    if limit is None:
        return False
    now = time.monotonic()
    if _first_task is None or _first_task[0] is not context:
        _first_task = (context, now)
        return False
    done = context.tasks - 1  # tasks since the first ended
    if done <= 0:
        return False
    pace = (now - _first_task[1]) / done
    if (limit - context.tasks) * pace > LEAD_SECONDS:
        return False
    context.soon = True
    forwarder = context.forwarder
    if announce and forwarder is not None:
        # The notice after_task sends (see WorkerContext.after_task).
        forwarder.announce(("l", os.getpid(), context.index))
    return True


def recycling_process_worker(
    call_queue: Any,
    result_queue: Any,
    initializer: Any,
    initargs: tuple[Any, ...],
    max_tasks: int | None = None,
) -> None:
    """``concurrent.futures.process._process_worker``, deciding after the task.

    The stdlib's decides before running a task whether it is the last;
    memory is known only after. ``max_tasks`` is ignored: the worker's
    spec counts tasks. ``exit_pid`` carries the decision to the manager
    thread: the pid to leave now, minus the pid (once) to have its
    replacement started (see :class:`RecyclingProcessPool`).
    """
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            # The stdlib's way: the parent sees the exit and breaks the pool.
            _stdlib._base.LOGGER.critical("Exception in initializer:", exc_info=True)
            return
    announced = False
    while True:
        call_item = call_queue.get(block=True)
        if call_item is None:
            result_queue.put(os.getpid())  # wakes the manager, as the stdlib's
            return
        exception = None
        result = None
        try:
            result = call_item.fn(*call_item.args, **call_item.kwargs)
        except BaseException as e:
            exception = _stdlib._ExceptionWithTraceback(e, e.__traceback__)
        leaving, soon = recycling()
        soon = soon or replacement_due()
        exit_pid = None
        if leaving:
            exit_pid = os.getpid()
        elif soon and not announced:
            announced = True
            exit_pid = -os.getpid()
        if exception is not None:
            _stdlib._sendback_result(
                result_queue, call_item.work_id, exception=exception, exit_pid=exit_pid
            )
        else:
            _stdlib._sendback_result(
                result_queue, call_item.work_id, result=result, exit_pid=exit_pid
            )
        # The stdlib's reason: free the task's objects before waiting.
        del result, call_item, exception
        if leaving:
            # Now, not at the exit: frees the slot its spare waits for.
            leave_process()
            return


class _SpareSpawningManager(_ExecutorManagerThread):
    """The stdlib's manager thread; a negative ``exit_pid`` starts a spare."""

    def process_result_item(self, result_item: Any) -> None:
        exit_pid = getattr(result_item, "exit_pid", None)
        if exit_pid is None:
            super().process_result_item(result_item)
            return
        # Handled here, not by the stdlib: it would join the leaving worker
        # in this thread, and no result flows while that one exits.
        result_item.exit_pid = None
        super().process_result_item(result_item)
        pool: Any = self.executor_reference()
        if pool is None:
            return  # as the stdlib: nothing started for a collected pool
        if exit_pid < 0:
            if not self.is_shutting_down():
                self._start_worker(pool)
            return
        # Leaving: out of the pool now (its exit is no crash), reaped by the
        # next Process.start() (multiprocessing's _cleanup) or at exit. Its
        # replacement starts even while shutting down, as the stdlib's: the
        # backlog needs it, and it gets its sentinel with the others.
        self.processes.pop(exit_pid, None)
        if len(self.processes) < pool._max_workers:
            self._start_worker(pool)

    def _start_worker(self, pool: Any) -> None:
        # In this thread, which alone reads self.processes between steps.
        pool._start_worker(self.processes, self.call_queue, self.result_queue)


class RecyclingProcessPool(ProcessPoolExecutor):
    """``ProcessPoolExecutor`` whose workers leave when their spec says so.

    Workers run :func:`recycling_process_worker`; a spare started ahead
    counts as a worker, so the stdlib starts none when the old one exits.
    Python 3.11+ (3.10's manager takes any worker's exit for a crash).
    Pass ``max_tasks_per_child`` to the spec, not to this pool.
    """

    def _spawn_process(self) -> None:
        pool: Any = self
        self._start_worker(pool._processes, pool._call_queue, pool._result_queue)

    def _adjust_process_count(self) -> None:
        pool: Any = self
        manager = threading.current_thread()
        if isinstance(manager, _ExecutorManagerThread):
            # The manager's own references: shutdown(wait=False) sets the
            # pool's to None while the manager still runs the backlog.
            found = (manager.processes, manager.call_queue, manager.result_queue)
        else:
            found = (pool._processes, pool._call_queue, pool._result_queue)
        # Not the idle-worker semaphore: a worker that left must be
        # replaced even with a stale token (CPython gh-115634).
        if found[0] is not None and len(found[0]) < pool._max_workers:
            self._start_worker(*found)

    def _start_worker(
        self, processes: MutableMapping[int, Any], call_queue: Any, result_queue: Any
    ) -> None:
        pool: Any = self
        process = pool._mp_context.Process(
            target=recycling_process_worker,
            args=(call_queue, result_queue, pool._initializer, pool._initargs),
        )
        process.start()
        processes[process.pid] = process

    def _start_executor_manager_thread(self) -> None:
        pool: Any = self
        if pool._executor_manager_thread is None:
            if not pool._safe_to_dynamically_spawn_children:
                pool._launch_processes()
            manager = _SpareSpawningManager(self)
            pool._executor_manager_thread = manager
            manager.start()
            _threads_wakeups[manager] = pool._executor_manager_thread_wakeup


class UntilRecycled(int):
    """``maxtasksperchild`` for a ``multiprocessing.Pool`` that recycles by spec.

    Pool's worker loop runs ``while maxtasks is None or (maxtasks and
    completed < maxtasks)``: for an ``int`` subclass Python asks the right
    operand first (``maxtasks.__gt__(completed)``), so the loop goes on
    until the task that made this worker leave, whatever the count. Pool's
    checks (``>= 1``, ``<= 0``) see the int 1. Pickles by reference, so
    spawned workers get it.
    """

    def __new__(cls) -> UntilRecycled:
        return super().__new__(cls, 1)

    def __gt__(self, completed: object) -> bool:
        leaving = recycling()[0]
        if leaving:
            # Its last result is sent: leave now, not at the exit, which
            # frees the slot its spare waits for.
            leave_process()
        return not leaving

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return UntilRecycled, ()


class _SpareRequest:
    """A stand-in in Pool's list of workers: one that exited, so to speak.

    Pool's worker handler starts workers only after it reaped one that
    exited, and only up to ``processes``: this one reads as exited (it is
    reaped at once, and leaves no sentinel to wait on), and
    :class:`_PoolSize` then counts the spare in.
    """

    exitcode = 0
    pid = None
    name = "executors-spare-request"

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        return None

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None

    def close(self) -> None:
        return None


class _PoolSize(int):
    """Pool's ``processes``, one more for each worker whose spare was asked for.

    Pool's worker handler starts ``processes - len(pool)`` workers after a
    reap, and reads ``processes`` nowhere else. A spare is counted only
    while the worker it replaces is still in the pool: one that has left
    already (its announcement came with its last task) is replaced by
    Pool as any other, so the pool never grows past one spare per worker
    about to leave.
    """

    owner: SparePoolMixin
    leaving: list[int]

    def __sub__(self, other: int) -> int:
        owner = self.owner
        with owner._spare_lock:
            leaving, self.leaving = self.leaving, []
        present = {worker.pid for worker in owner._pool}
        spares = sum(1 for pid in leaving if pid in present)
        return int(self) + spares - other


class SparePoolMixin(multiprocessing.pool.Pool):
    """A Pool that starts a spare worker when asked (put it first in the bases).

    Its worker handler thread starts workers, as in Pool (nowhere else, so
    nothing races with it): :meth:`request_spare` hands it a
    :class:`_SpareRequest` to reap, and a :class:`_PoolSize` that counts
    the spare. A spare is one beyond ``processes`` while the worker it
    replaces finishes its tasks.
    """

    _pool: list[Any]
    _processes: int
    _change_notifier: Any

    def __init__(self, processes: int | None = None, *args: Any, **kwargs: Any) -> None:
        self._spare_lock = threading.Lock()
        size = _PoolSize(os.cpu_count() or 1 if processes is None else processes)
        size.owner = self
        size.leaving = []
        super().__init__(size, *args, **kwargs)

    def request_spare(self, pid: int = 0, slot: int | None = None) -> None:
        """Start a spare for worker ``pid`` soon: ``WorkerSettings(on_leaving=)``."""
        size: Any = self._processes
        with self._spare_lock:
            size.leaving.append(pid)
        self._pool.append(_SpareRequest())
        self._change_notifier.put(None)  # wakes the worker handler
