"""Backend ``mp_pool``: :class:`multiprocessing.pool.Pool`, made hang-free.

Raw ``Pool`` breaks the contract in four places, and this backend closes
each with a piece of :mod:`executors.backends._mp` or of the shared core:

* A worker that dies mid-task is silently replaced and its task's result
  never arrives (CPython gh-66587, bpo-22393). A
  :class:`~executors.backends._mp.watch.PoolWatch` sees every worker's exit
  and breaks the executor.
* A failing ``initializer`` makes raw Pool restart workers forever. The
  watch raises :class:`~executors.InitializerFailedError` instead.
* ``apply_async`` has no ``cancel()``. Work waits in a
  :class:`~executors._callqueue.CallQueue` and only a small window is
  handed to the Pool, so queued futures cancel.
* A result that cannot be pickled arrives as ``MaybeEncodingError`` (its
  type lost); one that cannot be unpickled kills Pool's result thread.
  Tasks travel as bytes (:mod:`executors._outcome`), so both fail only
  their own future, with the original error.

And it adds what Pool cannot do at all: stopping one running task (a task
timeout, ``kill_task``) without breaking the pool. Each call runs through
:func:`~executors.backends._mp.taskslots.run_tracked`, which keeps its id
in the worker's :class:`~executors.backends._mp.taskslots.TaskSlots` slot
while it runs; a stop kills exactly that worker, at a moment it holds none
of Pool's locks, and the watch lets Pool replace it.

How a task flows::

    submit(fn, *args)
      │ dumps((fn, args, kwargs)) now: an unpicklable argument fails its
      │ future here (a chunk of a map is a PickledCall, pickled later by
      │ Pool's task handler)
      v
    CallQueue ── cancellable ── at most 2 per worker handed over (4 chunks)
      │ launch: Pool.apply_async(run_tracked, (call id, payload))
      v
    Pool's task handler ─▶ inqueue ─▶ worker: run_tracked ─▶ outqueue
                                                            │
    future ◀── CallQueue.settle(decode(outcome)) ◀── Pool's result handler

    PoolWatch thread: every worker's sentinel and the status pipe; a crash
    breaks the CallQueue and dismantles the Pool; once the queue has closed
    and drained, it closes the Pool. A worker killed to stop its task is no
    crash: Pool replaces it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from .. import _shm
from .._base import BaseExecutor
from .._callqueue import Call, CallQueue
from .._capabilities import Capabilities
from .._forkserver import preload_in_forkserver
from .._lifecycle import close_at_exit
from .._map import Chunk, ChunkResult
from .._options import check_process_pool_options, cpu_count, start_method_of
from .._outcome import Outcome
from .._workers import WorkerSettings
from .._workers._pools import UntilRecycled
from ._mp.pool import WatchedPool
from ._mp.taskslots import STOP_KILLED, STOP_SKIPPED, TaskSlots, run_tracked
from ._mp.watch import PoolWatch

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


# _Launched.stop while a stop is deciding (see _Launcher.stop).
_STOPPING = "stopping"


class _Launched:
    """A launched call's note (``call.handle``): its id and Pool job."""

    __slots__ = ("call_id", "job", "parked", "returned", "stop")

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id
        self.job: int | None = None  # Pool's job id, once apply_async returns
        self.returned = False  # Pool has reported the outcome
        self.stop: str | None = None  # _STOPPING, STOP_KILLED, STOP_SKIPPED
        # An outcome that arrived while a stop was deciding.
        self.parked: tuple[bool, Any] | None = None


class _Launcher:
    """Hands calls to the Pool and settles them from Pool's result handler.

    It holds the Pool and the call queue but not the executor, and so does
    every callback it leaves with the Pool: an executor dropped without
    ``shutdown()`` is still garbage-collected, which closes its queue.
    """

    def __init__(
        self, pool: WatchedPool, watch: PoolWatch, shm_threshold: int | None
    ) -> None:
        self.pool = pool
        self.watch = watch
        # Results come back through shared memory too: run_tracked's argument.
        self.reply: tuple[Any, ...] = () if shm_threshold is None else (shm_threshold,)
        self.calls: CallQueue  # set right after, the queue needs launch()
        self._ids = itertools.count(1)  # 0 means "no call" in a slot
        # Guards a handle's stop against its outcome arriving meanwhile.
        self._stop_lock = threading.Lock()

    def launch(self, call: Call) -> None:
        handle = _Launched(next(self._ids))
        call.handle = handle
        result = self.pool.apply_async(
            run_tracked,
            (handle.call_id, call.payload, *self.reply),
            callback=functools.partial(self._done, call, handle),
            error_callback=functools.partial(self._failed, call, handle),
        )
        handle.job = result._job  # type: ignore[attr-defined]
        if handle.stop == STOP_KILLED:
            # Stopped before apply_async returned.
            self._forget_job(handle)

    def _done(self, call: Call, handle: _Launched, outcome: Outcome) -> None:
        handle.returned = True
        if handle.stop is None or not self._stopped(handle, (True, outcome)):
            self._deliver(call, (True, outcome))

    def _failed(self, call: Call, handle: _Launched, error: BaseException) -> None:
        # Pool itself failed the task: its task handler could not pickle it.
        handle.returned = True
        if handle.stop is None or not self._stopped(handle, (False, error)):
            self._deliver(call, (False, error))

    def _deliver(self, call: Call, returned: tuple[bool, Any]) -> None:
        arrived, outcome = returned
        if not arrived:
            self.calls.settle(call, error=outcome)
            return
        self.calls.settle_outcome(call, outcome)

    def _stopped(self, handle: _Launched, returned: tuple[bool, Any]) -> bool:
        """Whether a stop owns the call whose outcome just arrived."""
        with self._stop_lock:
            if handle.stop == _STOPPING:
                handle.parked = returned  # stop() decides what becomes of it
                return True
            stop = handle.stop
        if stop == STOP_SKIPPED:
            # It had finished when it was marked: no worker will skip it.
            self.watch.unskip(handle.call_id)
        return stop is not None

    def stop(self, call: Call) -> bool:
        """CallQueue's ``stop``: stop a launched call's task, if it runs.

        The core settles the call when this returns True; its outcome, if
        Pool still reports one, is dropped.
        """
        handle = call.handle
        if not isinstance(handle, _Launched) or handle.stop is not None:
            return False
        # Set before reading `returned`, as _done sets `returned` before
        # reading `stop`: one of the two sees the other.
        handle.stop = _STOPPING
        if handle.returned:
            return self._undo_stop(call, handle)
        how = self.watch.stop_call(handle.call_id)
        if how is None:
            return self._undo_stop(call, handle)
        with self._stop_lock:
            handle.stop = how
            parked, handle.parked = handle.parked, None
        if how == STOP_KILLED:
            # Its worker died inside the task: Pool will never report it,
            # and a job left in Pool's cache would keep a closing Pool
            # waiting for it.
            if handle.job is not None:
                self._forget_job(handle)
        elif parked is not None:
            # It finished while being marked: no worker will skip it.
            self.watch.unskip(handle.call_id)
        return True

    def _undo_stop(self, call: Call, handle: _Launched) -> bool:
        # Not stopped after all: an outcome that arrived meanwhile counts.
        with self._stop_lock:
            handle.stop = None
            parked, handle.parked = handle.parked, None
        if parked is not None:
            self._deliver(call, parked)
        return False

    def _forget_job(self, handle: _Launched) -> None:
        # A deletion that empties the cache notifies Pool's worker handler
        # (once the Pool is closing), as a result arriving would.
        with contextlib.suppress(KeyError):
            del self.pool._cache[handle.job]


def _launch_waiting(calls: CallQueue) -> None:
    # In the watch's thread: a worker has started, so a call with a timeout
    # waiting for a free one may go now. Nothing else would launch it
    # before the next submit or settle.
    calls.pump()


def _release(watch: PoolWatch, settings: WorkerSettings) -> None:
    watch.close()
    # The listener ends once the workers, leaving, have sent their last records.
    settings.close(wait=False)


def _close_abandoned(calls: CallQueue, watch: PoolWatch) -> None:
    # The executor was garbage-collected without shutdown(): let the work
    # drain, then close the Pool, and still finish it at interpreter exit.
    calls.close()
    close_at_exit(watch)


class MpPoolExecutor(BaseExecutor):
    """A :class:`multiprocessing.pool.Pool` behind the executors contract.

    A worker that dies breaks the executor for good, as with the stdlib
    process pool: every unfinished future fails with
    :class:`~executors.WorkerCrashedError` and later submits raise it. A
    worker killed on purpose to stop its task (a task timeout,
    ``kill_task``) is replaced instead, and the executor goes on.

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
        shm_threshold: Buffers of arguments and results (NumPy arrays) of at
            least this many bytes travel through shared memory; ``None``:
            through the pipe (see ``docs/large-data.md``).
    """

    backend = "mp_pool"
    capabilities = Capabilities(
        survives_worker_death=False,
        task_control=True,
        stops_timed_out_tasks=True,
        kills_single_task=True,
        terminates_workers=True,
        shared_memory=True,
        worker_identity=True,
        worker_finalizer=True,
        recycles_workers=True,
        forwards_logs=True,
        limits_worker_threads=True,
        nested_executors=True,
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
        cloudpickle: bool = True,
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = "auto",
        forward_logs: bool = True,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        threshold = _shm.check_threshold(shm_threshold)
        workers, context, per_child = check_process_pool_options(
            max_workers=max_workers,
            default_workers=cpu_count(),
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            max_memory_per_child=max_memory_per_child,
            max_tasks_per_child=per_child,
        )
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        if initializer is not None:
            initializer = self._prepare(initializer)
        if finalizer is not None:
            settings.finalizer = self._prepare(finalizer)
        recycles = settings.max_tasks is not None or settings.max_memory is not None
        # Workers (and their replacements) fork ready, not importing us.
        preload_in_forkserver(context)
        watch = PoolWatch(self.backend, context)
        try:
            slots = TaskSlots(context, workers)
            pool = WatchedPool(
                processes=workers,
                # The spec counts tasks and memory; Pool's loop ends after
                # the task that made the worker leave.
                maxtasksperchild=UntilRecycled() if recycles else None,
                context=context,
                **watch.pool_options(initializer, initargs, slots, settings.spec()),
            )
        except BaseException:
            watch.discard()
            raise
        settings.on_leaving = pool.request_spare
        self._workers = settings
        launcher = _Launcher(pool, watch, threshold)
        launcher.calls = self._queue = CallQueue(
            launcher.launch,
            DISPATCH_PER_WORKER * workers,
            chunk_window=CHUNK_DISPATCH_PER_WORKER * workers,
            on_idle=functools.partial(_release, watch, settings),
            stop=launcher.stop,
            # A call with a timeout goes only to a free worker that has
            # started, so that its clock runs while it runs, not while it
            # waits in Pool's pipe or for a worker to boot.
            slots=watch.ready_workers,
            # A dead worker breaks the pool: nothing is left to retry on.
            retries_crashes=False,
        )
        self._queue.shm_threshold = threshold
        # BaseExecutor's task control (kill_task, terminate_workers) finds
        # the queue here.
        self._calls = self._queue
        watch.watch(
            pool,
            on_broken=self._queue.break_,
            on_ready=functools.partial(_launch_waiting, self._queue),
        )
        self._watch = watch
        self._close_when_collected(
            functools.partial(_close_abandoned, self._queue, watch)
        )

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        return self._queue.submit_pickled(fn, args, kwargs)

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: Chunk
    ) -> Future[ChunkResult]:
        # Pickled by the library's task-feeding thread (see submit_chunk).
        return self._queue.submit_chunk(fn, chunk)

    def _signal_workers(self, sig: signal.Signals) -> None:
        # terminate_workers(), kill_workers(): the core has failed the
        # running calls and cancelled the queued ones. The watch takes the
        # deaths for no crash, lets Pool start no replacement, and
        # dismantles the Pool (the _shutdown that follows waits for it).
        self._watch.terminate(sig)

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._queue.close(cancel_futures)
        if wait:
            self._watch.wait()
            # The workers are gone: so is what they sent; our free segments too.
            _shm.trim()
            self._workers.close(wait=True)
