"""``map_engine="parallel"``: ``joblib.Parallel`` on the executor's own workers.

Plugged in through ``BaseExecutor._engine_map``, so ``map``,
``map_unordered`` and :mod:`executors.aio` all honour it. Each batch
``Parallel`` dispatches becomes one call on the executor's
:class:`~executors._callqueue.CallQueue`; each item runs inside
:class:`~._trip.Guarded`, so a failing item comes back as a value at its
position and the map yields every earlier result before it raises, where
joblib alone would abort the call.
"""

from __future__ import annotations

import contextlib
import threading
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
from ..._map import _progress_bar
from ._trip import Failure, Guarded

if TYPE_CHECKING:
    from ._executor import JoblibExecutor

__all__ = ["parallel_map"]


class _OwnWorkersMixin:
    """A joblib backend that runs ``Parallel``'s batches on one executor.

    ``submit`` hands a batch to the executor's call queue and
    ``abort_everything`` cancels only this call's queued batches: joblib's
    own loky backend kills every worker of its executor on abort, which here
    would kill other tasks of the same executor.
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
        # Memmapping options live on the executor (they shape its pickling);
        # the ones Parallel passes here are ignored.
        self.parallel = parallel
        self._owner._attach_parallel(self, parallel)
        return self._owner.max_workers

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        fut = self._owner._submit_batch(func)
        with self._pending_lock:
            self._pending.add(fut)
        # Internal callbacks run in the thread that settles the batch, before
        # the queue checks whether it is idle: the next batch Parallel
        # dispatches from its callback is queued before a shutdown() waiting
        # for the queue could conclude that the work has drained.
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
            return [Failure(exc)]

    def abort_everything(self, ensure_ready: bool = True) -> None:
        with self._pending_lock:
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()


class _LokyOnOwnWorkers(_OwnWorkersMixin, LokyBackend):  # type: ignore[misc]
    """``Parallel`` on this executor's loky pool (``isinstance`` LokyBackend:
    ``Parallel`` then gives each call its own memmapping folder)."""


class _ThreadsOnOwnWorkers(_OwnWorkersMixin, ParallelBackendBase):  # type: ignore[misc]
    """``Parallel`` on this executor's threads: one item per batch, as joblib."""

    uses_threads = True
    supports_sharedmem = True

    def terminate(self) -> None:
        pass


class _MpOnOwnWorkers(_OwnWorkersMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """``Parallel`` on this executor's ``multiprocessing.Pool``, auto-batching.

    Not a ``LokyBackend``: batches use the executor's memmapping folder.
    """

    def terminate(self) -> None:
        self.reset_batch_stats()


_BACKENDS: dict[str, type[_OwnWorkersMixin]] = {
    "loky": _LokyOnOwnWorkers,
    "threading": _ThreadsOnOwnWorkers,
    "multiprocessing": _MpOnOwnWorkers,
}


class _StopMap(Exception):
    """Thrown into joblib's generator to end a ``map`` early, quietly."""


class _ParallelResults(Iterator[Any]):
    """The iterator a ``Parallel``-based ``map`` returns.

    Raises a failed item's exception at its position. Ending early (a
    failure, ``close()``, garbage collection) throws :class:`_StopMap` into
    joblib's generator: joblib then aborts the call (our backend cancels its
    queued batches) without the "tasks have been executed but not used"
    warning that closing its generator would print.
    """

    def __init__(self, outputs: Generator[Any, None, None], bar: Any) -> None:
        self._outputs = outputs
        self._bar = bar
        self._done = False

    def __iter__(self) -> _ParallelResults:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            value = next(self._outputs)
        except BaseException:
            self._finish()
            raise
        if type(value) is Failure:
            self.close()
            raise value.error
        return value

    def _finish(self) -> None:
        self._done = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Stop the map: cancel its queued work and release joblib's call."""
        if self._done:
            return
        self._finish()
        with contextlib.suppress(_StopMap, StopIteration):
            self._outputs.throw(_StopMap())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _stream(results: _ParallelResults) -> Generator[Any, None, None]:
    """The results as a generator, like the shared map's.

    ``yield from`` closes ``results`` when this generator is closed; a
    generator dropped before it started is closed by ``results.__del__``.
    """
    try:
        yield from results
    finally:
        results.close()


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

    Eager, as the contract wants without ``buffersize``: the whole input is
    read now; ``Parallel`` dispatches it as batches complete.
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
    return _stream(_ParallelResults(outputs, bar))
