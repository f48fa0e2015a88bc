"""Minimal ``concurrent.futures.Executor`` adapters for peers whose API differs.

``python -m executors.testing certify`` takes any callable that returns a
``concurrent.futures.Executor``. The stdlib pools and loky's
``get_reusable_executor`` are one already; these two peers are not, so
each gets the thinnest adapter that gives it ``submit`` / ``map`` /
``shutdown`` and nothing more. Every behaviour the scorecard measures is the
peer's own: the adapters neither retry, translate errors nor validate input.
``docs/peers.md`` shows them in full.

Certify them with::

    python -m executors.testing certify executors.testing.adapters:PebbleExecutor
    python -m executors.testing certify executors.testing.adapters:DaskClientExecutor
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

__all__ = ["DaskClientExecutor", "PebbleExecutor"]


class PebbleExecutor(futures.Executor):
    """``pebble.ProcessPool`` as an Executor.

    ``submit`` is pebble's ``schedule``; ``map`` is the stdlib's default,
    built on ``submit`` (pebble's own ``map`` returns one future of an
    iterator, with a per-chunk timeout: another API). ``shutdown`` is
    ``close`` + ``join``; ``cancel_futures`` cancels the futures that have
    not started, as the stdlib does (pebble's ``stop()`` would also kill the
    running ones).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        pebble = importlib.import_module("pebble")
        options: dict[str, Any] = {"initializer": initializer, "initargs": initargs}
        if max_workers is not None:
            options["max_workers"] = max_workers
        self._pool = pebble.ProcessPool(**options)
        self._futures: weakref.WeakSet[futures.Future[Any]] = weakref.WeakSet()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> futures.Future[Any]:
        future: futures.Future[Any] = self._pool.schedule(fn, args=args, kwargs=kwargs)
        self._futures.add(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for future in list(self._futures):
                if not future.running():
                    future.cancel()
        self._pool.close()
        if wait:
            self._pool.join()


class DaskClientExecutor(futures.Executor):
    """``distributed.Client.get_executor()`` on a private ``LocalCluster``.

    The cluster runs ``max_workers`` worker processes of one thread each on
    127.0.0.1, with no dashboard; ``shutdown`` is Dask's (``wait=False``
    cancels every unfinished future), then closes the client and the
    cluster. ``cancel_futures`` is not passed on: Dask's
    ``ClientExecutor.shutdown`` has no such parameter.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        distributed = importlib.import_module("distributed")
        # Its files in a folder of its own, removed at shutdown: Dask's
        # default leaves $TMPDIR/dask-scratch-space behind.
        self._folder = tempfile.mkdtemp(prefix="executors-dask-adapter-")
        self._cluster = distributed.LocalCluster(
            n_workers=max_workers or 2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=self._folder,
            scheduler_kwargs={"local_directory": self._folder},
        )
        self._client = distributed.Client(self._cluster)
        self._executor = self._client.get_executor()

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> futures.Future[Any]:
        future: futures.Future[Any] = self._executor.submit(fn, *args, **kwargs)
        return future

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], **options: Any
    ) -> Iterator[Any]:
        # Dask's map: it takes timeout, drops chunksize (each item is a
        # task) and rejects anything else.
        results: Iterator[Any] = self._executor.map(fn, *iterables, **options)
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # Dask's own shutdown: wait=False cancels every unfinished future.
        self._executor.shutdown(wait=wait)
        self._client.close()
        self._cluster.close()
        shutil.rmtree(self._folder, ignore_errors=True)
