"""``map_engine="parallel"``: ``joblib.Parallel`` on the executor's own workers.

Each batch is one call on the executor's call queue; each item runs inside
:class:`Guarded`, so a failing item comes back as a value at its
position and the map raises it after every earlier result.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    LokyBackend,
    ParallelBackendBase,
)

from ..._futures import add_internal_callback
from ..._map import ChunkResult, _progress_bar

if TYPE_CHECKING:
    from ._executor import JoblibExecutor

__all__ = ["parallel_map"]


class Guarded:
    """``fn`` for one ``Parallel`` item: a raised exception becomes a value.

    A ``ChunkResult`` with no values and the error (it pickles the worker's
    traceback), so ``Parallel`` delivers the earlier results, not aborting.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except BaseException as exc:
            return ChunkResult([], exc)


class _OwnWorkersMixin:
    """A joblib backend that runs ``Parallel``'s batches on one executor.

    On abort it cancels only this call's queued batches: joblib's own loky
    backend kills every worker, and with them this executor's other tasks.
    """

    supports_retrieve_callback = True
    parallel: Any

    def __init__(self, owner: JoblibExecutor, bar: Any, **kwargs: Any) -> None:
        super().__init__(nesting_level=0, **kwargs)  # type: ignore[call-arg]
        self._owner = owner
        self._bar = bar
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()

    def effective_n_jobs(self, n_jobs: int) -> int:
        return self._owner.max_workers

    def configure(
        self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any
    ) -> int:
        # Memmapping options are the executor's, not Parallel's; on loky each
        # call gets a folder of its own, as on joblib's executor.
        self.parallel = parallel
        workers = self._owner._workers
        if workers.memmapping is not None and self._owner.joblib_backend == "loky":
            workers.memmapping.manager.register_new_context(parallel._id)
        self._workers = workers.pool
        return self._owner.max_workers

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        # No shutdown guard: a map started before shutdown() completes, and
        # shutdown waits for it.
        fut = self._owner._submit(func, (), {})
        with self._pending_lock:
            self._pending.add(fut)
        # Internal callbacks run before the queue checks whether it is idle:
        # the next batch Parallel dispatches from its callback is queued
        # before a waiting shutdown() could think the work has drained.
        if self._bar is not None:
            size = len(func)
            add_internal_callback(
                fut, lambda f: None if f.cancelled() else self._bar.update(size)
            )
        if callback is not None:
            add_internal_callback(fut, callback)
        add_internal_callback(fut, self._forget)
        return fut

    def _forget(self, fut: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(fut)

    def retrieve_result_callback(self, fut: Future[Any]) -> Any:
        try:
            return fut.result()
        except futures.CancelledError:
            raise
        except BaseException as exc:
            # An infrastructure failure: deliver it at the batch's position,
            # after the earlier results, like a failing item.
            return [ChunkResult([], exc)]

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._pending_lock:
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()


class _LokyOnOwnWorkers(_OwnWorkersMixin, LokyBackend):  # type: ignore[misc]
    """On loky; a ``LokyBackend``, so each call gets its own memmapping folder."""


class _ThreadsOnOwnWorkers(_OwnWorkersMixin, ParallelBackendBase):  # type: ignore[misc]
    """On threads: one item per batch, as joblib."""

    uses_threads = True
    supports_sharedmem = True


class _MpOnOwnWorkers(_OwnWorkersMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """On ``multiprocessing``: batches use the executor's memmapping folder."""


_BACKENDS: dict[str, type[_OwnWorkersMixin]] = {
    "loky": _LokyOnOwnWorkers,
    "threading": _ThreadsOnOwnWorkers,
    "multiprocessing": _MpOnOwnWorkers,
}


class _StopMap(Exception):
    """Thrown into joblib's generator to end a ``map`` early, quietly."""


def _stop(outputs: Generator[Any, None, None], bar: Any) -> None:
    # Throwing _StopMap into joblib's generator makes joblib abort the call
    # (our backend cancels its queued batches) without the "tasks have been
    # executed but not used" warning that closing the generator would print.
    if bar is not None:
        bar.close()
    with contextlib.suppress(Exception):  # _StopMap, or already finished
        outputs.throw(_StopMap())


def _stream(outputs: Generator[Any, None, None], bar: Any) -> Iterator[Any]:
    try:
        for value in outputs:
            if type(value) is ChunkResult and isinstance(value.error, BaseException):
                raise value.error
            yield value
    finally:
        _stop(outputs, bar)


def parallel_map(
    owner: JoblibExecutor,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    ordered: bool,
    batch_size: int | str,
    pre_dispatch: int | str,
    progress: bool,
) -> Iterator[Any]:
    """Run one ``map`` through ``joblib.Parallel`` on ``owner``'s workers.

    Eager (no ``buffersize``): the input is read now, dispatched in batches.
    """
    items = list(zip(*iterables, strict=False))
    bar = _progress_bar(len(items)) if progress else None
    try:
        guarded = Guarded(owner._prepare(fn))
        backend = _BACKENDS[owner.joblib_backend](owner, bar)
        parallel = joblib.Parallel(
            n_jobs=owner.max_workers,
            backend=backend,
            return_as="generator" if ordered else "generator_unordered",
            batch_size=batch_size,
            pre_dispatch=pre_dispatch,
        )
        outputs = parallel((guarded, args, {}) for args in items)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    results = _stream(outputs, bar)
    # A map dropped or closed before its first result ends joblib's call too.
    weakref.finalize(results, _stop, outputs, bar)
    return results
