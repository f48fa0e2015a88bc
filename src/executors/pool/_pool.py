"""``Pool``: the stdlib's methods and states, driving one executor.

The methods check the pool's state and hand the work to the executor;
what comes back is an :class:`~executors.pool.AsyncResult` filled by
:class:`~executors.pool._unfinished.Unfinished`, or an
:class:`~executors.pool.IMapIterator` over the executor's lazy map.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .._map import MapRun
from .._registry import create
from ._imap import IMapIterator, InputReader
from ._results import AsyncResult, result_or_error, stdlib_error
from ._starred import Starred
from ._unfinished import Unfinished

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._base import BaseExecutor

__all__ = ["CLOSE", "IMAP_CHUNKS_PER_WORKER", "RUN", "TERMINATE", "Pool"]

T = TypeVar("T")

# The states of the stdlib's Pool, with its names, for repr and messages.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

# A lazy imap keeps at most this many chunks per worker read from the input
# and not yet handed to the caller: enough to keep every worker busy while
# the caller consumes, few enough to bound memory on an endless input.
IMAP_CHUNKS_PER_WORKER = 4


class Pool:
    """``multiprocessing.Pool``'s interface over any backend.

    Every method keeps the stdlib's signature and meaning; the differences
    are guarantees the stdlib does not give (see ``docs/coming-from-pool.md``).

    Args:
        processes: Number of workers; ``None`` is the backend's default.
        initializer: Called as ``initializer(*initargs)`` in each worker
            when it starts.
        initargs: Arguments for ``initializer``.
        maxtasksperchild: Tasks a worker process runs before it is replaced;
            ``None`` keeps workers for the pool's lifetime. Backends without
            worker processes refuse it with a ``TypeError``.
        context: A multiprocessing context or start method name, for the
            backends that start processes (passed as ``mp_context``).
        backend: The backend's name; ``None`` reads ``EXECUTORS_BACKEND``,
            else uses ``"process"`` (see :func:`executors.create`). A
            callable is called with the executor options instead of
            :func:`executors.create` (how ``executors.testing`` passes its
            ``executor_factory``).
        **options: Further keyword-only options of the backend, such as
            ``task_timeout`` for ``queue``.

    Raises:
        ValueError: ``processes`` is below 1, or ``maxtasksperchild`` is not
            a positive int (the stdlib's messages).
        TypeError: ``initializer`` is not callable, or the backend does not
            take an option.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        backend: str | Callable[..., BaseExecutor] | None = None,
        **options: Any,
    ) -> None:
        # The stdlib's checks and messages first, so code that catches them
        # keeps working; the backend checks everything else.
        if processes is not None and (
            not isinstance(processes, int) or isinstance(processes, bool)
        ):
            raise TypeError(f"processes must be an int or None, got {processes!r}")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int)
            or isinstance(maxtasksperchild, bool)
            or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if processes is not None:
            options["max_workers"] = processes
        if initializer is not None:
            options["initializer"] = initializer
            options["initargs"] = tuple(initargs)
        if maxtasksperchild is not None:
            options["max_tasks_per_child"] = maxtasksperchild
        if context is not None:
            options["mp_context"] = context
        try:
            self._executor: BaseExecutor = (
                backend(**options) if callable(backend) else create(backend, **options)
            )
        except ValueError as exc:
            if maxtasksperchild is None or _start_method(context) != "fork":
                raise
            if "fork" not in str(exc):
                raise
            # ProcessPoolExecutor's restriction, in Pool's terms and with the
            # ways out; no other start method is picked behind the caller's
            # back: "fork" means workers inherit the caller's memory (data
            # loaded before the pool, copy-on-write), which no other start
            # method gives.
            raise ValueError(_fork_refused(backend)) from exc
        self._state = RUN
        self._state_lock = threading.Lock()
        # What join() waits for beyond the executor's shutdown.
        self._unfinished = Unfinished()

    # -- what the stdlib does not have ------------------------------------

    @property
    def executor(self) -> BaseExecutor:
        """The executor that runs the pool's tasks."""
        return self._executor

    @property
    def backend(self) -> str:
        """The name of the backend, such as ``"queue"``."""
        return self._executor.backend

    # -- the stdlib's API -------------------------------------------------

    def apply(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},  # the stdlib's default; never mutated
    ) -> T:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        self._check_running()
        # Waited for right here, as the stdlib's get(): no callback thread
        # is involved, so a callback may call apply() too.
        success, value = result_or_error(self._executor.submit(func, *args, **kwds))
        if success:
            return value  # type: ignore[no-any-return]
        raise value

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},  # the stdlib's default; never mutated
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Start ``func(*args, **kwds)`` in a worker; return its AsyncResult.

        Raises:
            ValueError: ``"Pool not running"`` after ``close()`` or
                ``terminate()``.
        """
        self._check_running()
        result: AsyncResult[T] = AsyncResult(callback, error_callback)
        future = self._executor.submit(func, *args, **kwds)
        self._unfinished.track_apply(result, future)
        return result

    def map(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
    ) -> list[T]:
        """Return ``list(map(func, iterable))``, computed by the workers.

        ``chunksize=None`` lets the shared map pick chunk sizes.
        """
        return self._map_blocking(func, iterable, chunksize)

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Start ``map``; return an AsyncResult for the list of results."""
        return self._map_async(func, iterable, chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[T]:
        """Like :meth:`map`, each item unpacked: ``func(*item)``."""
        return self._map_blocking(Starred(func), iterable, chunksize)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Like :meth:`map_async`, each item unpacked: ``func(*item)``."""
        return self._map_async(
            Starred(func), iterable, chunksize, callback, error_callback
        )

    def imap(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[T]:
        """Return an iterator over ``map(func, iterable)``, in order.

        Unlike the stdlib's, it reads ``iterable`` lazily, a few chunks per
        worker ahead of the caller, so an endless input works in bounded
        memory.

        Raises:
            ValueError: ``chunksize`` is below 1, or the pool is not running.
        """
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[T]:
        """Like :meth:`imap`, but each result comes as soon as it is ready."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def close(self) -> None:
        """Accept no more work; ``join()`` then waits for the work to finish.

        The executor stays open until ``join()``: an ``imap`` started before
        ``close()`` still submits its remaining chunks, as the stdlib keeps
        feeding its tasks.
        """
        with self._state_lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """Stop the workers now; unfinished work fails instead of hanging."""
        with self._state_lock:
            self._state = TERMINATE
        self._stop_workers_now()
        self._unfinished.wait()

    def join(self) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first.

        Raises:
            ValueError: ``"Pool is still running"``.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._executor.shutdown(wait=True)
        self._unfinished.wait()

    def __enter__(self) -> Self:
        self._check_running()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # The stdlib's context manager terminates, it does not wait.
        self.terminate()

    def __reduce__(self) -> NoReturn:
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled"
        )

    def __repr__(self) -> str:
        return (
            f"<executors.Pool state={self._state} backend={self.backend!r} "
            f"pool_size={self._executor.max_workers}>"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        state = getattr(self, "_state", None)
        if state == RUN:
            _warn(
                f"unclosed running executors.Pool {self!r}",
                ResourceWarning,
                source=self,
            )
            self._executor.shutdown(wait=False, cancel_futures=True)
        elif state == CLOSE:
            # Closed, never joined: let the workers go once the work is done.
            self._executor.shutdown(wait=False)

    # -- internals ----------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _stop_workers_now(self) -> None:
        """Stop running tasks, cancel queued ones, leave no worker process.

        ``terminate_workers()``: SIGTERM to every worker, queued futures
        cancelled, running ones failed; threads (which cannot be stopped)
        are waited for, as raw ``ThreadPool.terminate()`` does.
        """
        self._executor.terminate_workers()
        self._executor.shutdown(wait=True)

    def _map_blocking(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None
    ) -> list[T]:
        # In the caller's thread, as the stdlib's map() waits: no callback
        # thread is involved, so a callback may call map() too. An error of
        # the input is raised from here, sized or not, as by the stdlib.
        self._check_running()
        items = list(iterable)
        run = self._executor._start_map(
            func, (items,), True, None, chunksize, None, False
        )
        try:
            return list(run.results())
        except BaseException as exc:
            translated = stdlib_error(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> AsyncResult[list[T]]:
        self._check_running()
        result: AsyncResult[list[T]] = AsyncResult(callback, error_callback)
        if hasattr(iterable, "__len__"):
            # The stdlib reads a sized input in its task thread, and reports
            # an error of the input from get(); an unsized one is read right
            # here, and its error raised by this call. Both the same here.
            try:
                items = list(iterable)
            except Exception as exc:
                result._set(False, exc)
                return result
        else:
            items = list(iterable)
        # Every chunk is submitted here, by the shared map (the executor's
        # own map, so its chunking and task options apply); what is left is
        # to fill the result, which the futures' callbacks do.
        run = self._executor._start_map(
            func, (items,), True, None, chunksize, None, False
        )
        if isinstance(run, MapRun):
            self._unfinished.track_map(result, run)
        else:
            self._unfinished.track_engine_map(run.results(), result)
        return result

    def _imap(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int,
        ordered: bool,
    ) -> IMapIterator[T]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        reader = InputReader(iterable, chunksize)
        workers = self._executor.max_workers
        buffersize = chunksize * IMAP_CHUNKS_PER_WORKER * workers
        start = self._executor.map if ordered else self._executor.map_unordered
        results = start(func, reader, chunksize=chunksize, buffersize=buffersize)
        return IMapIterator(
            results, reader, self._executor.capabilities.runs_concurrently
        )


def _start_method(context: Any) -> str | None:
    if isinstance(context, str):
        return context
    get = getattr(context, "get_start_method", None)
    return None if get is None else str(get())


def _fork_refused(backend: object) -> str:
    where = f"the {backend!r} backend" if isinstance(backend, str) else "this backend"
    return (
        f"maxtasksperchild cannot be used with the 'fork' start method on "
        f"{where}, which replaces workers by 'spawn' or 'forkserver' only: "
        "pass context='forkserver' or context='spawn' (new workers then do "
        "not inherit the caller's memory), or use backend='mp_pool' or "
        "backend='queue', which fork replacement workers as "
        "multiprocessing.Pool does"
    )
