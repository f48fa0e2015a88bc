"""Backend ``mp_pool``: :class:`multiprocessing.pool.Pool`, made hang-free.

Raw ``Pool`` breaks the contract in four places, and this backend closes
each with a piece of the shared core:

* A worker that dies mid-task is silently replaced and its task's result
  never arrives (CPython gh-66587, bpo-22393). A
  :class:`~executors._poolwatch.PoolWatch` sees every worker's exit and
  breaks the executor.
* A failing ``initializer`` makes raw Pool restart workers forever. The
  watch raises :class:`~executors.InitializerFailedError` instead.
* ``apply_async`` has no ``cancel()``. Work waits in a
  :class:`~executors._callqueue.CallQueue` and only a small window is
  handed to the Pool, so queued futures cancel.
* A result that cannot be pickled arrives as ``MaybeEncodingError`` (its
  type lost); one that cannot be unpickled kills Pool's result thread.
  Tasks travel as bytes (:mod:`executors._outcome`), so both fail only
  their own future, with the original error.

How a task flows::

    submit(fn, *args)
      │ dumps((fn, args, kwargs)) now: an unpicklable argument fails its
      │ future here (a chunk of a map is a PickledCall, pickled later by
      │ Pool's task handler)
      v
    CallQueue ── cancellable ── at most 2 per worker handed over (4 chunks)
      │ launch: Pool.apply_async(run_call, payload)
      v
    Pool's task handler ─▶ inqueue ─▶ worker: run_call ─▶ outqueue
                                                            │
    future ◀── CallQueue.settle(decode(outcome)) ◀── Pool's result handler

    PoolWatch thread: every worker's sentinel and the status pipe; a crash
    breaks the CallQueue and dismantles the Pool; once the queue has closed
    and drained, it closes the Pool.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from .._base import BaseExecutor
from .._callqueue import Call, CallQueue
from .._capabilities import Capabilities
from .._errors import ExecutorInterruptedError
from .._futures import Future as OurFuture
from .._futures import drain_callbacks, settle
from .._lifecycle import close_at_exit, interpreter_exiting
from .._map import Chunk, ChunkResult, run_chunk
from .._options import check_process_pool_options, cpu_count
from .._outcome import Outcome, PickledCall, decode, dumps, run_call
from .._poolwatch import PoolWatch, WatchedPool

__all__ = ["MpPoolExecutor"]

T = TypeVar("T")

# Tasks handed to the Pool and not yet finished, per worker. Two keeps each
# worker's next task waiting in the pipe while it runs one, so workers never
# idle between tasks; more would leave fewer futures cancellable.
DISPATCH_PER_WORKER = 2
# The same for chunks of a map: as many as a lazy map keeps in flight per
# worker (CHUNKS_IN_FLIGHT_PER_WORKER), so an eager map of tiny tasks is
# handed over whole, as Pool.map does, instead of waiting a result round
# trip for each of its last chunks.
CHUNK_DISPATCH_PER_WORKER = 4


class _Launcher:
    """Hands calls to the Pool and settles them from Pool's result handler.

    It holds the Pool and the call queue but not the executor, and so does
    every callback it leaves with the Pool: an executor dropped without
    ``shutdown()`` is still garbage-collected, which closes its queue.
    """

    def __init__(self, pool: WatchedPool) -> None:
        self.pool = pool
        self.calls: CallQueue  # set right after, the queue needs launch()

    def launch(self, call: Call) -> None:
        self.pool.apply_async(
            run_call,
            (call.payload,),
            callback=functools.partial(self._done, call),
            error_callback=functools.partial(self._failed, call),
        )

    def _done(self, call: Call, outcome: Outcome) -> None:
        ok, value = decode(outcome)
        if ok:
            self.calls.settle(call, value)
        else:
            self.calls.settle(call, error=value)

    def _failed(self, call: Call, error: BaseException) -> None:
        # Pool itself failed the task: its task handler could not pickle it.
        self.calls.settle(call, error=error)


def _interrupted() -> BaseException:
    return ExecutorInterruptedError(
        "the 'mp_pool' executor was interrupted (KeyboardInterrupt); its "
        "running tasks were stopped"
    )


def _close_abandoned(calls: CallQueue, watch: PoolWatch, pid: int) -> None:
    # The executor was garbage-collected without shutdown(): let the work
    # drain, then close the Pool, and still finish it at interpreter exit.
    # Not in a forked child, which may have inherited a lock held.
    if os.getpid() == pid:
        calls.close()
        close_at_exit(watch)


class MpPoolExecutor(BaseExecutor):
    """A :class:`multiprocessing.pool.Pool` behind the executors contract.

    A worker that dies breaks the executor for good, as with the stdlib
    process pool: every unfinished future fails with
    :class:`~executors.WorkerCrashedError` and later submits raise it.

    Args:
        max_workers: Worker processes; default: the usable CPUs.
        mp_context: Start method name or multiprocessing context; default
            ``"forkserver"`` on POSIX.
        initializer: Called in each worker as it starts; if it raises or
            kills the worker, the executor breaks with
            :class:`~executors.InitializerFailedError`.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks (Pool's
            ``maxtasksperchild``); ``None`` keeps workers for the pool's life.
        cloudpickle: Send the callable and the initializer with cloudpickle
            (lambdas and closures work).
    """

    backend = "mp_pool"
    capabilities = Capabilities(survives_worker_death=False)

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        mp_context: str | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        cloudpickle: bool = True,
    ) -> None:
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=cpu_count(),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        if initializer is not None:
            initializer = self._prepare(initializer)
        watch = PoolWatch(self.backend, context)
        try:
            pool = WatchedPool(
                processes=workers,
                maxtasksperchild=per_child,
                context=context,
                **watch.pool_options(initializer, initargs),
            )
        except BaseException:
            watch.discard()
            raise
        launcher = _Launcher(pool)
        launcher.calls = self._queue = CallQueue(
            launcher.launch,
            DISPATCH_PER_WORKER * workers,
            chunk_window=CHUNK_DISPATCH_PER_WORKER * workers,
            on_idle=watch.close,
        )
        # BaseExecutor's task control (kill_task, terminate_workers) finds
        # the queue here.
        self._calls = self._queue
        watch.watch(pool, on_broken=self._queue.break_)
        self._watch = watch
        finalizer = functools.partial(_close_abandoned, self._queue, watch)
        weakref.finalize(self, finalizer, os.getpid()).atexit = False

    def _broken_error(self) -> BaseException | None:
        return self._queue.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: OurFuture[T] = OurFuture()
        try:
            payload = dumps((fn, args, kwargs))
        except Exception as exc:
            # Fails this future at once; the pool never sees the task.
            settle(future, error=exc)
            return future
        self._queue.submit(future, payload)
        return future

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]:
        # Pickled by Pool's task handler, so the first chunk is on its way
        # while the caller submits the others; one that fails to pickle
        # fails through Pool's error callback, at the chunk's position.
        future: OurFuture[ChunkResult] = OurFuture()
        self._queue.submit(
            future, PickledCall((run_chunk, (fn, chunk), {})), chunk=True
        )
        return future

    def _interrupt(self) -> None:
        # Ctrl-C: kill the workers now, fail what runs, cancel what is
        # queued. Kill first: the queue, once closed and idle, asks the
        # watch to close gracefully, which would wait for the tasks.
        self._watch.kill()
        self._queue.close(cancel_futures=True)
        self._queue.break_(_interrupted)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._queue.close(cancel_futures)
        if wait:
            self._watch.wait()
            # As the stdlib's shutdown(wait=True): the done-callbacks have
            # run when it returns (at exit the exit hook waits for them,
            # bounded; on the callback thread this returns at once).
            if not interpreter_exiting():
                drain_callbacks()
