"""The base class every backend builds on.

:class:`BaseExecutor` owns what is the same everywhere: the guards of
``submit`` (broken, then shut down, then the work, under one lock), argument
validation, ``map`` and ``map_unordered`` (through :mod:`executors._map`),
idempotent ``shutdown`` and the context manager. A backend implements three
hooks and nothing else::

    _submit(fn, args, kwargs) -> Future      # run one task
    _shutdown(wait, cancel_futures)          # release the workers, once
    _broken_error() -> BaseException | None  # optional: why it is broken

and may override ``_submit_chunk`` when it can run a chunk of ``map`` better
than "one task that loops" (see :mod:`executors.backends.queue`), and
``_engine_map`` when its library has a map engine of its own (joblib's
``Parallel``). The futures a backend returns are :class:`executors._futures.
Future` objects, settled through :func:`executors._futures.settle`, usually by
way of a :class:`executors._callqueue.CallQueue` in front of the library.
"""

from __future__ import annotations

import signal
import threading
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import _map
from ._callqueue import CallQueue
from ._capabilities import Capabilities
from ._control import (
    TaskOptions,
    WithOptions,
    submitting,
    submitting_options,
    unwrap_options,
)
from ._errors import TaskKilledError, WorkersTerminatedError
from ._futures import drain_callbacks, fail_futures, notify_cancelled
from ._lifecycle import (
    close_at_exit,
    close_when_collected,
    ending_on_keyboard_interrupt,
    interpreter_exiting,
)
from ._options import check_callable, check_map_arguments
from ._serialize import portable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BaseExecutor", "fail_futures", "notify_cancelled"]

T = TypeVar("T")


class BaseExecutor(futures.Executor, metaclass=ABCMeta):
    """Shared machinery of every backend; subclasses supply the hooks.

    Subclasses set the class attributes ``backend`` and ``capabilities`` and
    call ``super().__init__(max_workers=...)`` from a constructor whose
    options are keyword-only.

    Args:
        max_workers: The (validated) number of workers, used for chunking.
        cloudpickle: Send callables with cloudpickle, so that lambdas,
            closures and ``__main__`` functions work in worker processes.
            Only meaningful where ``capabilities.process_isolation``.
    """

    backend: ClassVar[str] = "base"
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The call queue in front of the library, for backends that keep one:
    #: task control (timeouts, retries, kill_task, terminate_workers) works
    #: through it.
    _calls: CallQueue | None = None
    _task_options: TaskOptions | None = None
    _when_collected: weakref.finalize[..., object] | None = None

    def __init__(self, *, max_workers: int, cloudpickle: bool = True) -> None:
        if not isinstance(cloudpickle, bool):
            raise TypeError(f"cloudpickle must be True or False, got {cloudpickle!r}")
        self._max_workers = max_workers
        self._portable_callables = cloudpickle and self.capabilities.process_isolation
        # Reentrant: the inline backend runs tasks under it, and a task may
        # submit to its own executor.
        self._lock = threading.RLock()
        self._shutdown_started = False
        close_at_exit(self)

    # -- the public API -------------------------------------------------

    @property
    def max_workers(self) -> int:
        """The number of workers (1 for ``inline``)."""
        return self._max_workers

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; see :meth:`executors.Executor.submit`."""
        check_callable(fn)
        if (
            self._task_options is None
            and not isinstance(fn, WithOptions)
            and submitting_options() is None
        ):
            # No task options in force, here or around: nothing to set.
            return self._submit_task(self._prepare(fn), args, kwargs)
        fn, options = self._task_options_for(fn)
        with submitting(options):
            return self._submit_task(self._prepare(fn), args, kwargs)

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM, then shut the executor down.

        Python 3.14's ``ProcessPoolExecutor.terminate_workers()``, on every
        backend. Every future that is not done resolves at once: queued
        ones are cancelled, running ones fail with
        :class:`~executors.WorkersTerminatedError`. Where workers cannot be
        stopped (``capabilities.terminates_workers`` is false: threads,
        inline) the running tasks are abandoned and run on.
        """
        self._end_workers(signal.SIGTERM, "terminate_workers")

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL."""
        self._end_workers(signal.SIGKILL, "kill_workers")

    def kill_task(self, future: Future[Any]) -> bool:
        """Stop the running task of ``future``; the executor lives on.

        Returns:
            True if the task was stopped: its future fails with
            :class:`~executors.TaskKilledError`. False if the future is not
            this executor's running task, or the backend cannot stop one
            task alone (``capabilities.kills_single_task``).
        """
        calls = self._calls
        if calls is None:
            return False
        call = calls.find(future)
        if call is None or not calls.stop(call):
            return False
        return calls.settle(
            call,
            error=TaskKilledError(
                f"the task was stopped by kill_task() on the {self.backend!r} "
                "executor; its worker was replaced"
            ),
            retry=False,
        )

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Ordered parallel map; see :meth:`executors.Executor.map`."""
        return self._start_map(
            fn, iterables, True, timeout, chunksize, buffersize, progress
        ).results()

    def map_unordered(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Results as they complete; see :meth:`executors.Executor.map_unordered`."""
        return self._start_map(
            fn, iterables, False, timeout, chunksize, buffersize, progress
        ).results()

    def _end_workers(self, sig: signal.Signals, how: str) -> None:
        with self._lock:
            self._shutdown_started = True
        calls = self._calls
        if calls is not None:
            calls.close(cancel_futures=True)
            backend = self.backend
            calls.fail_launched(
                lambda: WorkersTerminatedError(
                    f"{how}() stopped the workers of the {backend!r} executor "
                    "while this task ran"
                )
            )
        self._signal_workers(sig)
        # Bounded: the workers are gone. Threads cannot be stopped: leave
        # them to end on their own rather than wait for them.
        self._shutdown(self.capabilities.terminates_workers, True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the workers; see :meth:`executors.Executor.shutdown`."""
        with self._lock:
            self._shutdown_started = True
        # Outside the lock: waiting for running tasks must not block a task
        # (or a callback) that tries to submit and gets the RuntimeError.
        self._shutdown(wait, cancel_futures)
        if wait and self._when_collected is not None:
            # Closed for good: nothing is left to close when collected.
            self._when_collected.detach()
        if wait:
            # As the stdlib's shutdown(wait=True): the done-callbacks of the
            # finished work have run when it returns. (From the callback
            # thread itself this returns at once.)
            drain_callbacks()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C means "stop", not "finish the queue first": drop queued
            # work and let the backend stop what is running.
            self._interrupt()
            self.shutdown(wait=True, cancel_futures=True)
        else:
            self.shutdown(wait=True)
        return None

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown_started else "running"
        name = type(self).__name__
        workers = self._max_workers
        return f"<{name} backend={self.backend!r} max_workers={workers} {state}>"

    # -- hooks for backends --------------------------------------------

    def close_at_exit(self) -> None:
        """Called once when the interpreter exits (see :mod:`executors._lifecycle`).

        As the stdlib pools do, the work already submitted is finished and
        the workers are released; a program ending on an unhandled Ctrl-C
        stops its running tasks and drops the queued ones instead. The
        executor is not marked shut down, so a submit from an ``atexit``
        hook raises the stdlib's "after interpreter shutdown" error. A
        Ctrl-C while the hook waits for the work stops it the same way: the
        ``KeyboardInterrupt`` must not escape, or the libraries' own exit
        hooks (loky's) would be skipped and the interpreter would wait for
        workers never told to stop.
        """
        if not ending_on_keyboard_interrupt():
            try:
                self._shutdown(wait=True, cancel_futures=False)
                return
            except KeyboardInterrupt:
                pass
        self._interrupt()
        self._shutdown(wait=True, cancel_futures=True)

    @abstractmethod
    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        """Start one task and return its stdlib future. Called under the lock."""

    @abstractmethod
    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Release the workers. Called on every ``shutdown()``; make it idempotent."""

    def _broken_error(self) -> BaseException | None:
        """Return the exception ``submit`` raises once the executor is broken.

        By default, the call queue's (``self._calls``), if there is one.
        """
        calls = self._calls
        return None if calls is None else calls.broken_error()

    def _interrupt(self) -> None:
        """Stop running tasks early: a ``with`` block is leaving on Ctrl-C.

        Optional. ``shutdown(wait=True, cancel_futures=True)`` follows; a
        backend that can stop its workers at once (terminate processes)
        does so here, so the program exits without waiting for its tasks.
        """

    def _start(self) -> None:
        """Start the workers, if the backend starts them lazily.

        Optional. Called before every submit and map, *outside* the lock, so
        a slow start (a Dask cluster takes seconds) never holds up a
        concurrent ``shutdown(wait=False)``. Must be cheap once started and
        raise the errors of ``_check_open`` if the executor is closed.
        """

    def _submit_chunk(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        """Start one chunk of a ``map``. Called under the lock."""
        return self._submit(_map.run_chunk, (fn, chunk), {})

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
        """Run a map on the library's own engine instead of the shared map.

        Optional; the default ``None`` means "use the shared map". Called
        with validated arguments, after the open check, outside the lock,
        by ``map``, ``map_unordered`` and :mod:`executors.aio` alike. The
        iterator returned must keep the map contract (results in order for
        ``ordered``, a failing item raised at its position, ``close()``
        cancels the rest).
        """
        return None

    # -- shared plumbing ------------------------------------------------

    def _close_when_collected(self, close: Callable[[], object]) -> None:
        """Run ``close()`` if this executor is dropped without ``shutdown()``.

        See :func:`executors._lifecycle.close_when_collected`; a
        ``shutdown(wait=True)`` cancels it.
        """
        self._when_collected = close_when_collected(self, close)

    def _prepare(self, fn: Callable[..., T]) -> Callable[..., T]:
        return portable(fn) if self._portable_callables else fn

    def _check_open(self) -> None:
        # The stdlib's messages, so one test checks every backend. Exiting
        # comes before "shut down": the exit hook shuts executors down, and
        # a late submit should learn why.
        broken = self._broken_error()
        if broken is not None:
            raise broken
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown_started:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _submit_task(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        self._start()
        with self._lock:
            self._check_open()
            return self._submit(fn, args, kwargs)

    def _submit_chunk_task(
        self, fn: Callable[..., Any], chunk: _map.Chunk
    ) -> Future[_map.ChunkResult]:
        with self._lock:
            self._check_open()
            return self._submit_chunk(fn, chunk)

    def _map_workers(self) -> int:
        return self._max_workers

    def _start_map(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
        progress: bool,
    ) -> _map.MapRun | _map.EngineMap:
        timeout, chunksize, buffersize = check_map_arguments(
            fn, timeout, chunksize, buffersize
        )
        fn, options = self._task_options_for(fn)
        # Before start_map: map's timeout counts from the call, and starting
        # the workers is not part of the map.
        self._start()
        with self._lock:
            self._check_open()
        if options is None:
            engine = self._engine_map(
                fn, iterables, ordered, timeout, chunksize, buffersize, progress
            )
            if engine is not None:
                return _map.EngineMap(engine)
        return _map.start_map(
            self,
            self._prepare(fn),
            iterables,
            ordered=ordered,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            progress=progress,
            task_options=options,
        )

    # -- task control -----------------------------------------------------

    def _set_task_options(self, options: TaskOptions) -> None:
        """The executor's defaults for every task (``create(task_timeout=...)``)."""
        if not self.capabilities.task_control and not options.is_default:
            raise TypeError(
                f"the {self.backend!r} backend does not support task_timeout "
                "or retries (capabilities.task_control is false)"
            )
        self._task_options = options

    def _task_options_for(
        self, fn: Callable[..., T]
    ) -> tuple[Callable[..., T], TaskOptions | None]:
        fn, per_call = unwrap_options(fn)
        if per_call is None:
            return fn, self._task_options
        if not self.capabilities.task_control:
            raise TypeError(
                f"the {self.backend!r} backend does not support with_options() "
                "(capabilities.task_control is false)"
            )
        return fn, per_call.over(self._task_options)

    def _signal_workers(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process (``terminate_workers``).

        Optional; a backend whose workers are processes implements it and
        declares ``capabilities.terminates_workers``.
        """
