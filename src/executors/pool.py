"""``executors.Pool``: the ``multiprocessing.Pool`` API, on every backend.

A program written for ``multiprocessing.Pool`` changes one import and runs
on any backend, with the project's contract: a worker that dies fails its
task with a :class:`~concurrent.futures.BrokenExecutor` instead of leaving
``map`` waiting forever (CPython gh-66587, gh-96062)::

    from executors import Pool          # was: from multiprocessing import Pool

    with Pool(4, backend="queue") as pool:
        print(pool.map(abs, [-1, -2, -3]))

The pool is a thin layer over the public :class:`executors.Executor` API:

```
Pool.apply, map  ──▶ executor.submit / executor.map, waited for in the caller
Pool.apply_async ──▶ executor.submit ──▶ Future ──done callback──▶ AsyncResult
Pool.map_async   ──▶ executor.map (every chunk submitted at the call)
                        └─▶ done callbacks: once the map cannot block,
                            its list ──▶ AsyncResult (no thread per call)
Pool.imap        ──▶ executor.map(buffersize=...) ──▶ IMapIterator (lazy, bounded)
Pool.terminate   ──▶ stop running tasks, cancel queued ones, no process left
```

Where it differs from the stdlib, it is stronger, and
``docs/coming-from-pool.md`` lists each case.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from ._futures import add_internal_callback
from ._map import ChunkResult, MapRun
from ._registry import create
from ._remote import RemoteTraceback

if TYPE_CHECKING:
    # typeshed does not declare it.
    class MaybeEncodingError(Exception):
        exc: str
        value: str

        def __init__(self, exc: object, value: object) -> None: ...

else:
    from multiprocessing.pool import MaybeEncodingError

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._base import BaseExecutor

__all__ = ["AsyncResult", "IMapIterator", "Pool"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# The states of the stdlib's Pool, with its names, for repr and messages.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

# A lazy imap keeps at most this many chunks per worker read from the input
# and not yet handed to the caller: enough to keep every worker busy while
# the caller consumes, few enough to bound memory on an endless input.
IMAP_CHUNKS_PER_WORKER = 4

# A map run by a backend's own engine (joblib's map_engine="parallel") has no
# futures to watch: its map_async results are collected by at most this many
# threads per pool, in turn, however many such calls are pending.
ENGINE_COLLECTORS = 4


class _Starred:
    """``fn(*args)`` for ``starmap``: a picklable stand-in for a lambda.

    Module-level so that process workers unpickle it by reference; the
    wrapped callable travels inside it as the backend sends any callable.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _Starred, (self.fn,)


class _InputReader:
    """The caller's iterable, read in chunks, with its own error held back.

    ``multiprocessing.Pool.imap`` reports an exception raised by the input
    iterable from ``next()``, at the position of the chunk being read, after
    the results of every whole chunk before it. Reading chunk by chunk here,
    and stopping quietly at the error, gives the map exactly those chunks;
    the iterator raises the error once they are consumed.
    """

    def __init__(self, iterable: Iterable[Any], chunksize: int) -> None:
        self._iterable = iterable
        self._chunksize = chunksize
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            source = iter(self._iterable)
            while True:
                chunk = list(itertools.islice(source, self._chunksize))
                if not chunk:
                    return
                yield from chunk
        except Exception as exc:
            self.error = exc


class AsyncResult(Generic[T]):
    """What the ``*_async`` methods return: ``multiprocessing.pool.AsyncResult``.

    ``callback`` or ``error_callback`` runs once, before the result becomes
    ready, in the thread that completes it (a backend's thread, or the
    caller's on ``inline``): keep it short, as with the stdlib. An exception
    raised by a callback is logged, never lost in a thread.
    """

    def __init__(
        self,
        callback: Callable[[T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None:
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._success = False
        self._value: Any = None

    @property
    def _has_callbacks(self) -> bool:
        return self._callback is not None or self._error_callback is not None

    def ready(self) -> bool:
        """Return whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Return whether the call completed without raising.

        Raises:
            ValueError: The result is not ready yet (as the stdlib).
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Return the result when it arrives; raise the call's exception.

        Args:
            timeout: Seconds to wait; ``None`` waits until the result is
                ready, which always happens: a dead worker or a
                ``terminate()`` fails the call instead of leaving it pending.

        Raises:
            multiprocessing.TimeoutError: Not ready within ``timeout``.
            concurrent.futures.BrokenExecutor: The worker running the call
                died (the stdlib would wait forever).
            concurrent.futures.CancelledError: ``terminate()`` dropped the
                call before it ran.
        """
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value

    def __repr__(self) -> str:
        if not self.ready():
            state = "pending"
        else:
            state = "successful" if self._success else "failed"
        return f"<{type(self).__name__} {state}>"

    def _set(self, success: bool, value: Any) -> None:
        self._success = success
        self._value = value
        callback = self._callback if success else self._error_callback
        try:
            if callback is not None:
                callback(value)
        except Exception:
            log.exception("exception in the callback of %r", self)
        finally:
            # Ready only after the callback: get() returning means it ran,
            # as with the stdlib.
            self._event.set()

    def _set_from_future(self, future: Future[Any]) -> None:
        self._set(*_outcome_of(future))


class IMapIterator(Generic[T]):
    """What ``imap`` and ``imap_unordered`` return.

    A plain iterator, plus the stdlib's ``next(timeout)``. Dropping it, or
    calling :meth:`close`, cancels the work it has not started.
    """

    def __init__(
        self,
        results: Iterator[T],
        reader: _InputReader,
        concurrent: bool,
    ) -> None:
        self._results = results
        self._reader = reader
        self._concurrent = concurrent
        self._finished = False
        # A next() that timed out goes on in a helper thread; the call after
        # it waits for the same item, so no result is skipped.
        self._pending: Future[T] | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """Return the next result.

        Args:
            timeout: Seconds to wait for it; ``None`` waits until it comes.
                A timeout leaves the iterator usable: the next call returns
                the same item.

        Raises:
            multiprocessing.TimeoutError: Not ready within ``timeout``.
            StopIteration: No result is left.
        """
        with self._lock:
            if self._pending is None and (timeout is None or not self._concurrent):
                # The common case: advance the map right here, no thread.
                # (inline runs each task in the caller, so there is nothing
                # a timeout could stop.)
                return self._advance()
            if self._pending is None:
                self._pending = Future()
                threading.Thread(
                    target=self._advance_into,
                    args=(self._pending,),
                    name="executors.Pool imap next",
                    daemon=True,
                ).start()
            pending = self._pending
            try:
                value = pending.result(timeout)
            except FuturesTimeoutError:
                raise multiprocessing.TimeoutError from None
            finally:
                if pending.done():
                    self._pending = None
            return value

    def close(self) -> None:
        """Stop: cancel the work not started yet; later ``next()`` stops."""
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self._finished = True

    def _advance_into(self, pending: Future[T]) -> None:
        try:
            pending.set_result(self._advance())
        except BaseException as exc:
            pending.set_exception(exc)

    def _advance(self) -> T:
        if self._finished:
            raise StopIteration
        try:
            return next(self._results)
        except StopIteration:
            self._finished = True
            error, self._reader.error = self._reader.error, None
            if error is not None:
                raise error from None
            raise
        except BaseException as exc:
            self._finished = True
            translated = _stdlib_error(exc)
            if translated is exc:
                raise
            raise translated from exc


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
        self._lock = threading.Lock()
        # What join() waits for beyond the executor's shutdown: results
        # whose callbacks may still be running, and the threads collecting
        # engine maps (see ENGINE_COLLECTORS).
        self._unfinished: set[AsyncResult[Any]] = set()
        self._collectors: set[threading.Thread] = set()
        self._engine_maps: collections.deque[tuple[Iterator[Any], AsyncResult[Any]]] = (
            collections.deque()
        )

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
        success, value = _outcome_of(self._executor.submit(func, *args, **kwds))
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
        self._track(result, future)
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
        return self._map(func, iterable, chunksize)

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
        return self._map(_Starred(func), iterable, chunksize)

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
            _Starred(func), iterable, chunksize, callback, error_callback
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
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """Stop the workers now; unfinished work fails instead of hanging."""
        with self._lock:
            self._state = TERMINATE
        self._stop_workers_now()
        self._wait_for_results()

    def join(self) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first.

        Raises:
            ValueError: ``"Pool is still running"``.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._executor.shutdown(wait=True)
        self._wait_for_results()

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

    def _wait_for_results(self) -> None:
        # The executor's shutdown returns once every future is done, which
        # can be a moment before the done callbacks that make a result ready
        # have run: wait for those too, so that after join() every callback
        # has run, as with the stdlib.
        with self._lock:
            collectors = list(self._collectors)
            unfinished = list(self._unfinished)
        for thread in collectors:
            if thread is not threading.current_thread():
                thread.join()
        for result in unfinished:
            result.wait()

    def _track(self, result: AsyncResult[Any], future: Future[Any]) -> None:
        # The callback must not hold the pool: a backend may keep finished
        # futures a while, and the pool must still be collectable (and warn
        # if it was left running).
        lock, unfinished = self._lock, self._unfinished
        with lock:
            unfinished.add(result)

        def done(future: Future[Any]) -> None:
            result._set_from_future(future)
            with lock:
                unfinished.discard(result)

        _when_done(result._has_callbacks, future, done)

    def _track_map(self, result: AsyncResult[list[T]], run: MapRun) -> None:
        # As _track: the collector holds the pool's set, never the pool.
        lock, unfinished = self._lock, self._unfinished
        with lock:
            unfinished.add(result)

        def done(values: Iterator[T]) -> None:
            _collect(values, result)
            with lock:
                unfinished.discard(result)

        _MapCollector(run, done).start()

    def _map(
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
            translated = _stdlib_error(exc)
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
        # to collect the values, which the futures' callbacks do.
        run = self._executor._start_map(
            func, (items,), True, None, chunksize, None, False
        )
        if isinstance(run, MapRun):
            self._track_map(result, run)
        else:
            self._collect_engine_map(run.results(), result)
        return result

    def _collect_engine_map(
        self, values: Iterator[T], result: AsyncResult[list[T]]
    ) -> None:
        with self._lock:
            self._unfinished.add(result)
            self._engine_maps.append((values, result))
            if len(self._collectors) >= ENGINE_COLLECTORS:
                return
            thread = threading.Thread(
                target=self._collect_engine_maps,
                name="executors.Pool map_async",
                daemon=True,
            )
            self._collectors.add(thread)
        thread.start()

    def _collect_engine_maps(self) -> None:
        while True:
            with self._lock:
                if not self._engine_maps:
                    self._collectors.discard(threading.current_thread())
                    return
                values, result = self._engine_maps.popleft()
            _collect(values, result)
            with self._lock:
                self._unfinished.discard(result)

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
        reader = _InputReader(iterable, chunksize)
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


def _collect(values: Iterator[T], result: AsyncResult[list[T]]) -> None:
    try:
        collected = list(values)
    except BaseException as exc:
        result._set(False, _stdlib_error(exc))
    else:
        result._set(True, collected)


class _MapCollector:
    """Finishes a ``map_async`` from its futures' done callbacks.

    The stdlib's result thread fills every pending ``map_async``; here each
    map's own futures report, so no thread waits per call however many are
    pending. Once no step of the map can block (every task up to the first
    failure in input order is done, or every task is), the map's own
    iterator is read to its end in the thread of the last callback: it
    raises the first failing item's error and cancels the work not started,
    exactly as ``list(executor.map(...))`` would.
    """

    def __init__(self, run: MapRun, done: Callable[[Iterator[Any]], None]) -> None:
        self._run = run
        # Eager map: every task is submitted already, in input order.
        self._tasks = list(run.pending)
        self._done = done
        self._next = 0
        self._lock = threading.Lock()
        self._claimed = False

    def start(self) -> None:
        # On the callback thread, never in the thread that settles a future
        # (a library's own): reading a failed map cancels the work left,
        # which must not happen in a thread the pool needs.
        for task in self._tasks:
            task.future.add_done_callback(self._on_done)
        if not self._tasks:
            self._on_done(None)

    def _on_done(self, _future: Future[Any] | None) -> None:
        with self._lock:
            if self._claimed:
                return
            tasks = self._tasks
            while self._next < len(tasks) and _succeeded(tasks[self._next].future):
                self._next += 1
            if self._next < len(tasks) and not tasks[self._next].future.done():
                return
            self._claimed = True
        # Outside the lock: reading the map cancels what is left on a failure,
        # and a cancelled future calls back here at once, in this thread.
        self._done(self._run.results())


def _outcome_of(future: Future[Any]) -> tuple[bool, Any]:
    """Wait for ``future``; ``(True, value)``, or ``(False, error)`` as Pool's."""
    try:
        return True, future.result()
    except BaseException as exc:
        if not future.done():
            raise  # interrupted while waiting (Ctrl-C): not the task's error
        if future.cancelled():
            return False, CancelledError("the pool was terminated before it ran")
        return False, _stdlib_error(exc)


def _when_done(
    has_callbacks: bool, future: Future[Any], fn: Callable[[Future[Any]], None]
) -> None:
    """Call ``fn(future)`` once ``future`` is done, in the right thread.

    A result with a user callback is finished on the thread that runs the
    futures' callbacks: the callback may take its time. One without is
    finished at once, in the thread that settles the future: it only stores
    the outcome, and it must not wait for that callback thread, which may
    be running a callback that waits for this very result.
    """
    if has_callbacks:
        future.add_done_callback(fn)
    else:
        add_internal_callback(future, fn)


def _succeeded(future: Future[Any]) -> bool:
    """Whether a map task is done with every one of its items run."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    outcome = future.result()
    return not (isinstance(outcome, ChunkResult) and outcome.error is not None)


def _stdlib_error(error: BaseException) -> BaseException:
    """``error`` as ``multiprocessing.Pool`` would raise it.

    A result the worker could not pickle is the pickler's exception at the
    executor level; Pool code catches ``MaybeEncodingError`` for it, with
    the stdlib's message and attributes (``exc`` and ``value``, reprs).
    """
    cause = error.__cause__
    if not isinstance(cause, RemoteTraceback) or cause.unsent_result is None:
        return error
    wrapped = MaybeEncodingError(error, None)
    # The stdlib's value is repr(result), which only the worker could take.
    wrapped.value = cause.unsent_result
    wrapped.args = (wrapped.exc, wrapped.value)
    wrapped.__cause__ = error
    return wrapped
