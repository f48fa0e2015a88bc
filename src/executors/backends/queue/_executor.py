"""The ``queue`` executor: :class:`QueueExecutor`.

See docs/backends/queue.md, "How it works".
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from ... import _shm
from ..._base import BaseExecutor
from ..._callqueue import CallQueue
from ..._capabilities import Capabilities
from ..._control import TaskOptions, submitting
from ..._futures import Future as OurFuture
from ..._futures import add_internal_callback, notify_cancelled, settle
from ..._lifecycle import close_at_exit, join_unless_current
from ..._map import Chunk, ChunkResult
from ..._options import (
    check_process_pool_options,
    check_seconds,
    cpu_count,
    start_method_of,
)
from ..._outcome import dumps_apart
from ..._serialize import pickled_by_name, portable
from ..._workers import WorkerSettings
from ._items import Task, dumps_chunk
from ._manager import Manager
from ._pool import QueuePool
from ._triage import Triage
from ._wire import CALL, CHUNK

__all__ = ["QueueExecutor"]

T = TypeVar("T")

# As the stdlib's: Windows' WaitForMultipleObjects takes at most 64 handles.
_MAX_DEFAULT_WORKERS = 61


class QueueExecutor(BaseExecutor):
    """A process pool that survives its workers' deaths.

    Args:
        max_workers: Worker processes, started on demand; default: the usable
            CPUs (at most 61).
        mp_context: Start method name or context; default ``"forkserver"`` on
            POSIX (safe with threads; ``"fork"`` starts workers ~20x faster
            where the program runs no threads).
        initializer: Called in each worker before its first task; if it raises
            or kills the worker, the executor breaks with
            :class:`~executors.InitializerFailedError` (no restart loop).
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks (a ``map``
            chunk counts as one); its replacement starts half-way there and
            takes over at its last result.
        max_memory_per_child: Replace a worker whose resident memory is over
            this after a task (bytes, or e.g. ``"512MB"``); its replacement
            starts at three quarters. No task fails because of it.
        task_timeout: Seconds a task (each item of a ``map``) may run before
            its worker is killed and its future raises
            :class:`~executors.TaskTimeoutError`; ``None``: no limit.
            ``create()`` takes it as every backend's task option; per call:
            :func:`executors.with_options`.
        cloudpickle: Send the callable with cloudpickle (lambdas work).
        shm_threshold: Argument and result buffers (NumPy arrays) of at least
            this many bytes go through shared memory; ``None``: the pipe (see
            ``docs/large-data.md``).
        finalizer: Called in each worker when it leaves normally (shutdown,
            recycling); an exception there is logged in the caller on
            ``executors.workers``.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap each worker's BLAS/OpenMP threads; default
            ``max(1, cpus // max_workers)``; ``None``: leave them.
        forward_logs: A task's ``logging`` records reach the caller's loggers
            (see ``docs/workers.md``).
    """

    backend = "queue"
    capabilities = Capabilities(
        survives_worker_death=True,
        task_control=True,
        stops_timed_out_tasks=True,
        kills_single_task=True,
        terminates_workers=True,
        shared_memory=True,
        worker_identity=True,
        worker_finalizer=True,
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
        recycles_workers=True,
    )
    _calls: CallQueue

    @classmethod
    def _workers_start_method(cls, options: Mapping[str, Any]) -> str:
        """How the workers start, for :mod:`executors._mainmodule`."""
        return start_method_of(options.get("mp_context"))

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        mp_context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | str | None = None,
        task_timeout: float | None = None,
        cloudpickle: bool = True,
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
    ) -> None:
        threshold = _shm.check_threshold(shm_threshold)
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=min(_MAX_DEFAULT_WORKERS, cpu_count()),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        if task_timeout is not None:
            # Direct construction; create() passes it as a task option.
            timeout = check_seconds(task_timeout, "task_timeout", positive=True)
            self._task_options = TaskOptions(timeout=timeout)
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            max_memory_per_child=max_memory_per_child,
        )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        if initializer is not None and self._portable_callables:
            # Workers started by spawn or forkserver receive it pickled.
            initializer = portable(initializer)
        if settings.finalizer is not None and self._portable_callables:
            settings.finalizer = portable(settings.finalizer)
        self._workers = settings
        pool = QueuePool(
            context,
            workers,
            initializer,
            initargs,
            per_child,
            self,
            recycles=per_child is not None or settings.max_memory is not None,
        )
        # The pool counts its workers' tasks itself, the workers their memory.
        pool.worker_spec = settings.spec(max_tasks=None)
        pool.shm_threshold = self._shm_threshold = threshold
        # The pool and its call queue hold each other, never the executor, so
        # one dropped without shutdown() is collected (see QueuePool.should_stop).
        pool.calls = self._calls = CallQueue(
            pool.launch,
            # No window of its own: the pool says per call whether a worker
            # can take it now, and at a deadline how long the task has run.
            sys.maxsize,
            on_idle=pool.wakeup.wake,
            stop=pool.stop,
            retries_crashes=True,
            room=pool.room,
            run_left=pool.run_left,
        )
        self._pool = pool
        self._manager: Manager | None = None

    def _start_manager(self) -> None:
        # At the first task, under the executor's lock.
        pool = self._pool
        self._manager = pool.manager = Manager(pool, Triage(pool))
        self._manager.start()
        # The pool takes part in the exit hook itself, for an executor
        # dropped without shutdown() whose manager still runs its work.
        close_at_exit(pool)

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        fn = pickled_by_name(fn)
        future: OurFuture[T] = OurFuture()
        try:
            body, buffers = dumps_apart((fn, args, kwargs), self._shm_threshold)
        except Exception as exc:
            # Fails this future only; the pool never saw it.
            settle(future, error=exc)
            return future
        if self._manager is None:
            self._start_manager()
        self._calls.submit(
            future, Task(CALL, body, buffers, shm_threshold=self._shm_threshold)
        )
        self._pool.raise_deferred()
        return future

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]:
        # The shared map sends a map with task options one item per task
        # (through _submit): a chunk never has a timeout of its own.
        fn = pickled_by_name(fn)
        future: OurFuture[ChunkResult] = OurFuture()
        try:
            body, buffers = dumps_chunk(fn, chunk, shm_threshold=self._shm_threshold)
        except Exception as exc:
            return self._submit_up_to_unpicklable(fn, chunk, exc)
        self._submit_chunk_call(
            Task(CHUNK, body, buffers, fn, chunk, self._shm_threshold), future
        )
        return future

    def _submit_chunk_call(self, task: Task, future: Future[Any]) -> None:
        if self._manager is None:
            self._start_manager()
        with submitting(None):
            self._calls.submit(future, task, chunk=True)
        self._pool.raise_deferred()

    def _submit_up_to_unpicklable(
        self,
        fn: Callable[..., Any],
        chunk: Chunk,
        error: BaseException,
    ) -> Future[ChunkResult]:
        """Run the items before the first unpicklable one; its error comes last."""
        future: OurFuture[ChunkResult] = OurFuture()
        bad = 0
        for bad, args in enumerate(chunk.rows()):  # noqa: B007
            try:
                dumps_apart(args)
            except Exception as exc:
                error = exc
                break
        else:
            bad = 0  # every item pickles: the callable does not
        if bad == 0:
            settle(future, error=error)
            return future
        head = chunk[:bad]
        body, buffers = dumps_chunk(fn, head, shm_threshold=self._shm_threshold)
        inner: OurFuture[ChunkResult] = OurFuture()
        self._submit_chunk_call(
            Task(CHUNK, body, buffers, fn, head, self._shm_threshold), inner
        )

        def finish(done: Future[ChunkResult]) -> None:
            if future.done():
                return  # the map cancelled it while the items ran
            if done.cancelled():
                future.cancel()
                return
            failed = done.exception()
            if failed is not None:
                settle(future, error=failed)
            else:
                ran = done.result()
                failure = ran.error if ran.error is not None else error
                settle(future, ChunkResult(ran.values, failure, ran.elapsed))

        def propagate_cancel(outer: Future[ChunkResult]) -> None:
            if outer.cancelled():
                inner.cancel()
                # Nothing dequeues it: notify wait() and as_completed().
                notify_cancelled([outer])

        # The map holds only the outer future: wire it to the inner one with
        # internal callbacks (quick, and never behind the users' ones).
        add_internal_callback(future, propagate_cancel)
        add_internal_callback(inner, finish)
        return future

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        self._pool.close()
        if wait:
            join_unless_current(self._manager)
        # With wait, once every worker has sent its last records.
        self._workers.close(wait=wait)

    def _signal_workers(self, sig: signal.Signals) -> None:
        # terminate_workers() / kill_workers(), after the call queue has
        # failed the running calls: no worker is started from now on.
        self._pool.end_workers(sig)
