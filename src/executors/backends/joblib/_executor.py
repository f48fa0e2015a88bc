"""The ``joblib`` executor: options, the call queue, and the hooks of the base."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing.context
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, ClassVar, TypeVar

from joblib._utils import eval_expr
from joblib.disk import memstr_to_bytes
from joblib.externals.loky.backend import get_context as loky_get_context

from ... import _shm
from ..._base import BaseExecutor
from ..._callqueue import CallQueue
from ..._capabilities import Capabilities
from ..._control import submitting_options
from ..._errors import ExecutorInterruptedError
from ..._futures import Future as OurFuture
from ..._lifecycle import shutdown_from_own_task_error
from ..._options import (
    check_choice,
    check_initializer,
    check_int,
    check_max_tasks_per_child,
    check_max_workers,
    check_timeout,
    cpu_count,
    resolve_mp_context,
    start_method_of,
)
from ..._outcome import WorkerBootstrap
from ..._workers import AUTO, WorkerSettings
from ._parallel import parallel_map
from ._pools import LokyWorkers, MpWorkers, ThreadWorkers, Workers
from ._trip import translate_error

__all__ = ["JOBLIB_BACKENDS", "MAP_ENGINES", "JoblibExecutor"]

T = TypeVar("T")

# Calls handed to the workers at once, per worker, plus one. Two per worker
# keep a worker busy on tiny tasks (one running, one waiting in its queue);
# every call beyond that stays in the call queue, where cancel() works.
HANDED_OVER_PER_WORKER = 2

#: The joblib backends an executor can run on.
JOBLIB_BACKENDS = ("loky", "threading", "multiprocessing")
#: What runs ``map``: the project's shared map, or ``joblib.Parallel``.
MAP_ENGINES = ("shared", "parallel")
LOKY_START_METHODS = ("loky", "loky_init_main", "spawn", "forkserver")

# Threads share the caller's memory (the process items of the contract do
# not apply), and cannot be stopped.
_THREADS = Capabilities(process_isolation=False, task_control=True)

# loky's engine: what issue 26 wired in, except recycling (loky's worker
# loop decides nothing after a task; the multiprocessing engine recycles).
_LOKY = Capabilities(
    task_control=True,
    terminates_workers=True,
    shared_memory=True,
    worker_identity=True,
    worker_finalizer=True,
    forwards_logs=True,
    limits_worker_threads=True,
    nested_executors=True,
)
# The multiprocessing engine: a Pool, warm recycling as on mp_pool.
_MULTIPROCESSING = dataclasses.replace(_LOKY, recycles_workers=True)


def check_pre_dispatch(value: object, workers: int) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        expected = "an int or an expression such as '2 * n_jobs'"
        raise TypeError(f"pre_dispatch must be {expected}, got {value!r}")
    if value == "all":
        return value
    try:
        amount = eval_expr(str(value).replace("n_jobs", str(workers)))
    except ValueError as exc:
        raise ValueError(f"pre_dispatch {value!r} is not valid: {exc}") from None
    if not isinstance(amount, (int, float)) or int(amount) < 1:
        raise ValueError(f"pre_dispatch must amount to at least 1 item, got {value!r}")
    return value


def check_max_nbytes(value: object) -> int | None:
    message = f"max_nbytes must be an int, a size such as '1M' or None, got {value!r}"
    if isinstance(value, str):
        try:
            return int(memstr_to_bytes(value))
        except (ValueError, IndexError):
            raise ValueError(message) from None
    return check_int(value, "max_nbytes", minimum=0, not_int=message)


def loky_context(value: object) -> multiprocessing.context.BaseContext:
    """Map ``mp_context`` onto a start method loky supports."""
    if value is None or value in LOKY_START_METHODS:
        # None: joblib's own default, "loky" (fork followed by exec): a
        # worker never inherits the parent's threads and locks.
        return loky_get_context(value or "loky")  # type: ignore[no-any-return]
    if isinstance(value, multiprocessing.context.BaseContext):
        if value.get_start_method() != "fork":
            return value
    elif not isinstance(value, str):
        raise TypeError(
            "mp_context must be None, a start method name or a multiprocessing "
            f"context, got {value!r}"
        )
    elif value != "fork":
        raise ValueError(
            f"mp_context {value!r} is not a start method loky supports; choose "
            f"one of {', '.join(map(repr, LOKY_START_METHODS))}"
        )
    raise ValueError(
        "the 'joblib' backend does not support the 'fork' start method: loky "
        "workers must not inherit the parent's threads; use 'loky' (the "
        "default), 'spawn' or 'forkserver'"
    )


class JoblibExecutor(BaseExecutor):
    """An executor on joblib's workers (loky by default), each its own.

    Never joblib's reusable executor. With threads, ``capabilities``
    declares ``process_isolation=False`` and ``terminates_workers=False``.

    Args:
        max_workers: Workers (and ``Parallel``'s ``n_jobs``); default: the
            usable CPUs.
        joblib_backend: ``"loky"`` (default), ``"threading"`` or
            ``"multiprocessing"``.
        mp_context: Start method. loky: ``"loky"`` (default: fork then
            exec), ``"loky_init_main"``, ``"spawn"`` or ``"forkserver"``,
            never ``"fork"``. multiprocessing: as for ``process``. threading:
            none.
        initializer: Called in each worker as it starts; if it raises, the
            executor is broken (:class:`executors.InitializerFailedError`).
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Replace a worker after this many tasks; only
            with ``joblib_backend="multiprocessing"``.
        idle_worker_timeout: loky only: an idle worker exits after this many
            seconds; default ``None``: workers live until ``shutdown()``.
        map_engine: What runs ``map`` and ``map_unordered``: the project's
            ``"shared"`` map (default) or ``"parallel"``, ``joblib.Parallel``.
        batch_size: ``Parallel``'s ``batch_size`` when ``chunksize`` is
            ``None``: ``"auto"`` (default) or an int; needs ``"parallel"``.
        pre_dispatch: ``Parallel``'s ``pre_dispatch``; default
            ``"2 * n_jobs"``; needs ``map_engine="parallel"``.
        max_nbytes: NumPy arrays larger than this (default ``"1M"``) reach
            process workers as memory maps; ``None`` disables it.
        mmap_mode: Mode of those memory maps in the workers; default ``"r"``.
        temp_folder: Where they are written; default: joblib's choice.
        inner_max_num_threads: BLAS/OpenMP threads per loky worker, joblib's
            name for ``threads_per_worker`` (give one or the other).
        cloudpickle: Send the callable and the initializer with the
            project's cloudpickle wrapper, as every process backend does.
        shm_threshold: Buffers of arguments and results (NumPy arrays) of at
            least this many bytes travel through shared memory, process
            workers only; an argument that memmapping takes (above
            ``max_nbytes``) stays a memory map. ``None``: through the pipe
            (see ``docs/large-data.md``).
        finalizer: Called in each process worker when it leaves normally
            (shutdown, recycling, loky's idle timeout); an exception there
            is logged in the caller. Process engines only.
        finalargs: Arguments for ``finalizer``.
        threads_per_worker: Cap on each process worker's BLAS/OpenMP
            threads; default ``"auto"``: ``max(1, cpus // max_workers)``;
            ``None``: no cap. Process engines only.
        forward_logs: Send the log records of the process workers' tasks to
            this process's loggers (default ``True``).
        max_memory_per_child: Bytes, or a string such as ``"512MB"``: a
            worker over it after a task is replaced, its replacement
            started ahead; ``joblib_backend="multiprocessing"`` only.
    """

    backend: ClassVar[str] = "joblib"
    capabilities: ClassVar[Capabilities] = _LOKY
    _calls: CallQueue

    @classmethod
    def _workers_start_method(cls, options: Mapping[str, Any]) -> str | None:
        """How the workers start, for :mod:`executors._mainmodule`."""
        kind = options.get("joblib_backend", "loky")
        if kind == "threading":
            return None
        if kind == "multiprocessing":
            return start_method_of(options.get("mp_context"))
        method: str = loky_context(options.get("mp_context")).get_start_method()
        return method

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
        shm_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        finalizer: Callable[..., object] | None = None,
        finalargs: tuple[Any, ...] = (),
        threads_per_worker: int | str | None = AUTO,
        forward_logs: bool = True,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        kind = check_choice("joblib_backend", joblib_backend, JOBLIB_BACKENDS)
        threshold = _shm.check_threshold(shm_threshold)
        workers = check_max_workers(max_workers, default=cpu_count())
        check_initializer(initializer, initargs)
        per_child = check_max_tasks_per_child(max_tasks_per_child)
        idle = check_timeout(idle_worker_timeout, "idle_worker_timeout")
        self._map_engine = check_choice("map_engine", map_engine, MAP_ENGINES)
        loky, mp = kind == "loky", kind == "multiprocessing"
        by_parallel = map_engine == "parallel"
        for name, value, applies, needs in (
            ("max_tasks_per_child", per_child, mp, "joblib_backend='multiprocessing'"),
            ("idle_worker_timeout", idle, loky, "joblib_backend='loky'"),
            ("mp_context", mp_context, loky or mp, "a process joblib_backend"),
            ("batch_size", batch_size, by_parallel, "map_engine='parallel'"),
            ("pre_dispatch", pre_dispatch, by_parallel, "map_engine='parallel'"),
            ("finalizer", finalizer, loky or mp, "a process joblib_backend"),
            (
                "threads_per_worker",
                None if threads_per_worker == AUTO else threads_per_worker,
                loky or mp,
                "a process joblib_backend",
            ),
            (
                "max_memory_per_child",
                max_memory_per_child,
                mp,
                "joblib_backend='multiprocessing' (loky's workers run loky's "
                "own loop, which replaces no worker after a task)",
            ),
        ):
            if value is not None and not applies:
                raise ValueError(f"{name} applies only with {needs}")
        if batch_size not in (None, "auto"):
            message = f"batch_size must be 'auto' or an int, got {batch_size!r}"
            check_int(batch_size, "batch_size", minimum=1, not_int=message)
        self._batch_size = "auto" if batch_size is None else batch_size
        self._pre_dispatch = check_pre_dispatch(
            "2 * n_jobs" if pre_dispatch is None else pre_dispatch, workers
        )
        nbytes = check_max_nbytes(max_nbytes)
        if mmap_mode is not None:
            check_choice("mmap_mode", mmap_mode, ("r", "r+", "w+", "c"))
        if not isinstance(temp_folder, (str, os.PathLike, type(None))):
            raise TypeError(f"temp_folder must be a path or None, got {temp_folder!r}")
        folder = None if temp_folder is None else os.fspath(temp_folder)
        inner = check_int(inner_max_num_threads, "inner_max_num_threads", minimum=1)
        if inner is not None and threads_per_worker != AUTO:
            raise ValueError(
                "give inner_max_num_threads or threads_per_worker, not both: "
                "they are the same cap (joblib's name and the project's)"
            )
        settings = WorkerSettings(
            workers=workers,
            finalizer=finalizer,
            finalargs=finalargs,
            threads_per_worker=threads_per_worker,
            forward_logs=forward_logs,
            max_memory_per_child=max_memory_per_child,
            max_tasks_per_child=per_child,
            in_process=not (loky or mp),
        )
        if loky:
            context = loky_context(mp_context)
        elif mp:
            context = resolve_mp_context(mp_context)
            self.capabilities = _MULTIPROCESSING  # type: ignore[misc]
        else:
            self.capabilities = _THREADS  # type: ignore[misc]
        super().__init__(max_workers=workers, cloudpickle=cloudpickle)
        self._joblib_backend = kind
        if initializer is not None:
            initializer = self._prepare(initializer)
        if finalizer is not None:
            settings.finalizer = self._prepare(finalizer)
        memmap = (nbytes, mmap_mode, folder)
        pool: Workers
        if loky:
            # loky sets the thread caps in its workers' environment before
            # they import anything: the spec applies none of its own.
            threads = inner if inner is not None else settings.threads
            bootstrap = WorkerBootstrap(
                os.getpid(), initializer, initargs, settings.spec(threads=None)
            )
            pool = LokyWorkers(workers, context, bootstrap, idle, threads, memmap)
            pool.settings = settings
        elif mp:
            pool = MpWorkers(workers, context, initializer, initargs, settings, memmap)
        else:
            pool = ThreadWorkers(workers, initializer, initargs)
        if loky or mp:
            pool.shm_threshold = threshold
        self._workers = pool
        self._booted = False
        # A timed call launches only into a free worker (slots): loky reports
        # no start, and its clock must not run while it waits behind others.
        self._calls = CallQueue(
            pool.launch,
            HANDED_OVER_PER_WORKER * workers + 1,
            slots=workers,
            on_idle=pool.idle,
            translate=translate_error,
        )
        pool.attach(self._calls)
        self._close_when_collected(pool.abandon)

    @property
    def joblib_backend(self) -> str:
        """``"loky"``, ``"threading"`` or ``"multiprocessing"``."""
        return self._joblib_backend

    def _start(self) -> None:
        # A timeout counts from the launch, and a process pool starts its
        # workers on demand: the first timed task would spend its limit
        # waiting for them to boot. Let them boot first, once.
        options = submitting_options()
        if not self._booted and options is not None and options.timeout is not None:
            self._workers.boot()
            self._booted = True

    def _broken_error(self) -> BaseException | None:
        return self._workers.broken_error() or self._calls.broken_error()

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        # Also the batches of a Parallel map, unguarded (see _parallel).
        future: OurFuture[T] = OurFuture()
        self._calls.submit(future, self._workers.payload(fn, args, kwargs))
        return future

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
        """``joblib.Parallel`` runs the map, where it keeps the contract.

        The shared map runs it with a ``timeout``, a ``buffersize`` or one
        worker (see ``docs/backends/joblib.md``).
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

    def _in_own_task(self) -> bool:
        # The threading engine runs tasks in threads of this process.
        return self._workers.runs_in_current_thread()

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        self._calls.close(cancel_futures)
        if wait:
            if self._workers.runs_in_current_thread():
                raise shutdown_from_own_task_error()
            self._calls.wait_idle()
            self._workers.wait()
            # The workers are gone: so is what they sent; our free segments too.
            _shm.trim()

    def _interrupt(self) -> None:
        # Ctrl-C: cancel what is queued, fail what runs, stop the workers
        # now, so that the shutdown(wait=True) that follows returns at once.
        self._workers.stopping = True
        self._calls.close(cancel_futures=True)
        self._calls.break_(
            functools.partial(ExecutorInterruptedError.stopped, self.backend)
        )
        self._workers.kill()

    def _signal_workers(self, sig: signal.Signals) -> None:
        self._workers.signal(sig)
