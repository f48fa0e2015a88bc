"""The ``joblib`` executor: options, the call queue, and the hooks of the base."""

from __future__ import annotations

import multiprocessing.context
import os
import signal
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, ClassVar, TypeVar

from ..._base import BaseExecutor
from ..._callqueue import CallQueue
from ..._capabilities import Capabilities
from ..._control import submitting_options
from ..._errors import ExecutorInterruptedError
from ..._futures import Future as OurFuture
from ..._futures import drain_callbacks
from ..._lifecycle import (
    ending_on_keyboard_interrupt,
    interpreter_exiting,
)
from ..._options import (
    check_initializer,
    check_max_tasks_per_child,
    check_max_workers,
    check_timeout,
    cpu_count,
    resolve_mp_context,
)
from ..._outcome import WorkerBootstrap
from ._checks import (
    JOBLIB_BACKENDS,
    MAP_ENGINES,
    check_batch_size,
    check_choice,
    check_inner_threads,
    check_max_nbytes,
    check_mmap_mode,
    check_pre_dispatch,
    check_temp_folder,
)
from ._parallel import parallel_map
from ._pools import LokyWorkers, MpWorkers, ThreadWorkers, Workers, loky_context
from ._queue import Abandoned, Window, close_abandoned, start_reaper
from ._translate import translate_error
from ._trip import Memmapping

__all__ = ["JoblibExecutor"]

T = TypeVar("T")


_PROCESSES = Capabilities(task_control=True, terminates_workers=True)
# One class, three kinds of workers: threads share the caller's memory, so
# the process items of the contract do not apply, and cannot be stopped.
_THREADS = Capabilities(process_isolation=False, task_control=True)


def _interrupted() -> BaseException:
    return ExecutorInterruptedError(
        "the 'joblib' executor was interrupted (KeyboardInterrupt); its "
        "running tasks were stopped"
    )


class JoblibExecutor(BaseExecutor):
    """An executor on joblib's workers (loky by default), each its own.

    Every executor owns its workers (see the package docstring): a loky pool
    by default, never joblib's shared reusable executor. ``capabilities``
    depends on ``joblib_backend``: ``"threading"`` declares
    ``process_isolation=False`` and ``terminates_workers=False``.

    Args:
        max_workers: Workers; default: the usable CPUs. Also ``Parallel``'s
            ``n_jobs``.
        joblib_backend: ``"loky"`` (default), ``"threading"`` or
            ``"multiprocessing"``.
        mp_context: Start method. loky: ``None`` means loky's own ``"loky"``
            (fork then exec); ``"spawn"``, ``"forkserver"`` and
            ``"loky_init_main"`` are accepted, ``"fork"`` is rejected.
            multiprocessing: as for the ``process`` backend (default
            ``"forkserver"``). threading: must be ``None``.
        initializer: Called in each worker as it starts; if it raises, the
            executor is broken (:class:`executors.InitializerFailedError`).
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks; only
            with ``joblib_backend="multiprocessing"`` (loky has no such
            setting).
        idle_worker_timeout: loky only: seconds after which an idle worker
            exits (loky starts a new one on demand). Default ``None``: workers
            live until ``shutdown()``.
        map_engine: What runs ``map`` and ``map_unordered``: ``"shared"``
            (default), the project's map on these workers, or ``"parallel"``,
            ``joblib.Parallel`` wherever it can keep the contract.
        batch_size: ``Parallel``'s ``batch_size`` when ``chunksize`` is
            ``None``: ``"auto"`` (the default) or an int. Needs
            ``map_engine="parallel"``.
        pre_dispatch: ``Parallel``'s ``pre_dispatch``; ``"2 * n_jobs"`` by
            default. Needs ``map_engine="parallel"``.
        max_nbytes: Numpy arrays larger than this are sent to process workers
            as memory maps, by ``submit`` and by either map engine; ``None``
            disables it. Default ``"1M"``.
        mmap_mode: Mode of those memory maps in the workers; default ``"r"``.
        temp_folder: Where the memory maps are written; default: joblib's
            choice (``/dev/shm`` when large enough).
        inner_max_num_threads: Threads of BLAS/OpenMP pools in each loky
            worker; default ``cpus // max_workers`` unless set in the
            environment (joblib's default).
        cloudpickle: Send the callable and the initializer with the
            project's cloudpickle wrapper, as every process backend does
            (tracebacks name the script's file; errors name no values).
    """

    backend: ClassVar[str] = "joblib"
    capabilities: ClassVar[Capabilities] = _PROCESSES

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        joblib_backend: str = "loky",
        mp_context: str | multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        idle_worker_timeout: float | None = None,
        map_engine: str = "shared",
        batch_size: int | str | None = None,
        pre_dispatch: int | str | None = None,
        max_nbytes: int | str | None = "1M",
        mmap_mode: str | None = "r",
        temp_folder: str | None = None,
        inner_max_num_threads: int | None = None,
        cloudpickle: bool = True,
    ) -> None:
        kind = check_choice("joblib_backend", joblib_backend, JOBLIB_BACKENDS)
        workers = check_max_workers(max_workers, default=cpu_count())
        check_initializer(initializer, initargs)
        per_child = check_max_tasks_per_child(max_tasks_per_child)
        if per_child is not None and kind != "multiprocessing":
            raise ValueError(
                "the 'joblib' backend supports max_tasks_per_child only with "
                "joblib_backend='multiprocessing': loky workers are replaced "
                "only when they leak memory or sit idle (see idle_worker_timeout)"
            )
        idle = check_timeout(idle_worker_timeout, "idle_worker_timeout")
        if idle is not None and kind != "loky":
            raise ValueError(
                "idle_worker_timeout is a loky setting: it needs joblib_backend='loky'"
            )
        self._map_engine = check_choice("map_engine", map_engine, MAP_ENGINES)
        if map_engine != "parallel":
            for name, value in (
                ("batch_size", batch_size),
                ("pre_dispatch", pre_dispatch),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name} is a joblib.Parallel setting: it needs "
                        "map_engine='parallel'"
                    )
        self._batch_size = check_batch_size(
            "auto" if batch_size is None else batch_size
        )
        self._pre_dispatch = check_pre_dispatch(
            "2 * n_jobs" if pre_dispatch is None else pre_dispatch, workers
        )
        nbytes = check_max_nbytes(max_nbytes)
        mode = check_mmap_mode(mmap_mode)
        folder = check_temp_folder(temp_folder)
        inner = check_inner_threads(inner_max_num_threads)
        context: multiprocessing.context.BaseContext | None = None
        if kind == "loky":
            context = loky_context(mp_context)
        elif kind == "multiprocessing":
            context = resolve_mp_context(mp_context)
        elif mp_context is not None:
            raise ValueError("mp_context does not apply to joblib_backend='threading'")
        else:
            self.capabilities = _THREADS  # type: ignore[misc]
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        self._joblib_backend = kind
        if initializer is not None:
            initializer = self._prepare(initializer)
        pool: Workers
        if kind == "loky":
            assert context is not None
            pool = LokyWorkers(
                workers,
                context,
                WorkerBootstrap(os.getpid(), initializer, initargs),
                idle,
                Memmapping(nbytes, mode, folder, unlink_on_gc_collect=True),
                inner,
            )
        elif kind == "threading":
            pool = ThreadWorkers(workers, initializer, initargs)
        else:
            assert context is not None
            pool = MpWorkers(
                workers,
                context,
                initializer,
                initargs,
                per_child,
                Memmapping(nbytes, mode, folder, unlink_on_gc_collect=False),
            )
        self._workers = pool
        self._booted = False
        self._window = Window(workers)
        # BaseExecutor's task control (timeouts, retries, terminate_workers)
        # works through self._calls.
        self._calls = self._queue = CallQueue(
            pool.launch,
            self._window,
            on_idle=pool.idle,
            translate=translate_error,
        )
        if isinstance(pool, MpWorkers):
            pool.start(self._queue)
        else:
            pool.attach(self._queue)
        start_reaper()
        leftover = Abandoned(self, self._queue, pool)
        finalizer = weakref.finalize(self, close_abandoned, leftover, os.getpid())
        finalizer.atexit = False

    @property
    def joblib_backend(self) -> str:
        """``"loky"``, ``"threading"`` or ``"multiprocessing"``."""
        return self._joblib_backend

    # -- BaseExecutor hooks --------------------------------------------------

    def _start(self) -> None:
        # A timeout counts from the launch, and a process pool starts its
        # workers on demand: the first timed task would spend its limit
        # waiting for them to boot. Let them boot first, once.
        if self._booted:
            return
        options = submitting_options()
        if options is None or options.timeout is None:
            return
        self._workers.boot()
        self._booted = True

    def _broken_error(self) -> BaseException | None:
        return self._workers.broken_error() or self._queue.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: OurFuture[T] = OurFuture()
        options = submitting_options()
        if options is not None and options.timeout is not None:
            self._window.track(future)
        self._queue.submit(future, self._workers.payload(fn, args, kwargs))
        return future

    def _submit_batch(self, batch: Any) -> Future[Any]:
        # Batches of a running Parallel call: no shutdown guard, so that a
        # map started before shutdown() completes (shutdown waits for it).
        # A loky batch points the memmapping reducers at its call's own
        # folder while it is pickled.
        future: OurFuture[Any] = OurFuture()
        self._queue.submit(future, self._workers.payload(batch, (), {}))
        return future

    def _attach_parallel(self, backend: Any, parallel: Any) -> None:
        memmapping = self._workers.memmapping
        if memmapping is not None and self._joblib_backend == "loky":
            memmapping.manager.register_new_context(parallel._id)
        backend._workers = self._workers.pool

    def _engine_map(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
        progress: bool,
    ) -> Iterator[Any] | None:
        """``joblib.Parallel`` runs the map, where it can keep the contract.

        Not with a ``timeout`` (joblib's generator blocks in a polling loop
        that cannot be bounded from outside), a ``buffersize`` (joblib reads
        the input as batches complete, not as results are consumed) or one
        worker (joblib runs ``n_jobs=1`` in the caller): the shared map runs
        those. ``chunksize`` becomes ``Parallel``'s ``batch_size``.
        """
        if (
            self._map_engine == "shared"
            or timeout is not None
            or buffersize is not None
            or self._max_workers < 2
        ):
            return None
        return parallel_map(
            self,
            fn,
            iterables,
            ordered=ordered,
            batch_size=self._batch_size if chunksize is None else chunksize,
            pre_dispatch=self._pre_dispatch,
            progress=progress,
        )

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._queue.close(cancel_futures)
        if not wait:
            return
        self._queue.wait_idle()
        self._workers.wait()
        # As the stdlib's shutdown(wait=True): the done-callbacks have run
        # when it returns (at exit the exit hook waits for them, bounded).
        if not interpreter_exiting():
            drain_callbacks()

    def _interrupt(self) -> None:
        # Ctrl-C: cancel what is queued, fail what runs, stop the workers
        # now, so that the shutdown(wait=True) that follows returns at once.
        self._workers.stopping = True
        self._queue.close(cancel_futures=True)
        self._queue.break_(_interrupted)
        self._workers.kill()

    def _end_workers(self, sig: signal.Signals, how: str) -> None:
        # Before the base class fails the running calls: the queue, idle
        # then, releases the workers, and a Pool must not start closing
        # gracefully (waiting for workers about to be signalled).
        self._workers.ending = True
        super()._end_workers(sig, how)

    def _signal_workers(self, sig: signal.Signals) -> None:
        self._workers.signal(sig)

    def close_at_exit(self) -> None:
        """Finish the pending work at interpreter exit, or stop on Ctrl-C.

        As the base class does, and one more case: a Ctrl-C while the exit
        hook waits for the pending work stops it too. The
        ``KeyboardInterrupt`` must not escape: it would skip loky's own exit
        hook, loky's workers would never be told to stop, and the
        interpreter would wait for them for good.
        """
        try:
            if not ending_on_keyboard_interrupt():
                self._shutdown(wait=True, cancel_futures=False)
                return
        except KeyboardInterrupt:
            pass
        self._interrupt()
        self._shutdown(wait=True, cancel_futures=True)
