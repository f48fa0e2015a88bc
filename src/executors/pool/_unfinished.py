"""The pool's results not ready yet: how each gets filled, and ``join()``.

``apply_async`` fills its result from the future's done callback.
``map_async`` on the shared map fills its result from the futures' callbacks
too (:class:`MapReadiness`), so no thread waits per call however many are
pending; a map run by a backend's own engine has no futures, and a few
collector threads read those in turn (:data:`ENGINE_COLLECTORS`).
:meth:`Unfinished.wait` is what ``join()`` waits for beyond the executor.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from .._chunks import ChunkResult
from .._map import MapRun
from ._results import AsyncResult, call_when_done

__all__ = ["ENGINE_COLLECTORS", "MapReadiness", "Unfinished"]

# A map run by a backend's own engine (joblib's map_engine="parallel") has no
# futures to watch: its map_async results are collected by at most this many
# threads per pool, in turn, however many such calls are pending.
ENGINE_COLLECTORS = 4


class Unfinished:
    """The results a pool has handed out and not made ready yet.

    Its callbacks and threads hold this object, never the pool: a backend
    may keep finished futures a while, and the pool must still be
    collectable (and warn if it was left running).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: set[AsyncResult[Any]] = set()
        # The threads reading engine maps, and the maps waiting for one.
        self._collectors: set[threading.Thread] = set()
        self._engine_maps: collections.deque[tuple[Iterator[Any], AsyncResult[Any]]] = (
            collections.deque()
        )

    def track_apply(self, result: AsyncResult[Any], future: Future[Any]) -> None:
        """Fill ``result`` from ``future`` once it is done."""
        with self._lock:
            self._results.add(result)

        def on_done(future: Future[Any]) -> None:
            result._set_from_future(future)
            self._discard(result)

        call_when_done(result._has_callbacks, future, on_done)

    def track_map(self, result: AsyncResult[list[Any]], run: MapRun) -> None:
        """Fill ``result`` from a shared map once reading it cannot block."""
        with self._lock:
            self._results.add(result)

        def on_ready(values: Iterator[Any]) -> None:
            result._set_from_values(values)
            self._discard(result)

        MapReadiness(run, on_ready).start()

    def track_engine_map(
        self, values: Iterator[Any], result: AsyncResult[list[Any]]
    ) -> None:
        """Fill ``result`` from an engine's map, read by a collector thread."""
        with self._lock:
            self._results.add(result)
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

    def wait(self) -> None:
        """Wait until every result handed out so far is ready.

        The executor's shutdown returns once every future is done, which can
        be a moment before the done callbacks that make a result ready have
        run: ``join()`` waits for those too, so that after it every callback
        has run, as with the stdlib.
        """
        with self._lock:
            collectors = list(self._collectors)
            results = list(self._results)
        for thread in collectors:
            if thread is not threading.current_thread():
                thread.join()
        for result in results:
            result.wait()

    def _discard(self, result: AsyncResult[Any]) -> None:
        with self._lock:
            self._results.discard(result)

    def _collect_engine_maps(self) -> None:
        while True:
            with self._lock:
                if not self._engine_maps:
                    self._collectors.discard(threading.current_thread())
                    return
                values, result = self._engine_maps.popleft()
            result._set_from_values(values)
            self._discard(result)


class MapReadiness:
    """Reads a ``map_async``'s map once its futures say it cannot block.

    The stdlib's result thread fills every pending ``map_async``; here each
    map's own futures report, so no thread waits per call however many are
    pending. Once no step of the map can block (every task up to the first
    failure in input order is done, or every task is), the map's own
    iterator is handed to ``on_ready`` in the thread of the last callback:
    reading it raises the first failing item's error and cancels the work
    not started, exactly as ``list(executor.map(...))`` would.
    """

    def __init__(self, run: MapRun, on_ready: Callable[[Iterator[Any]], None]) -> None:
        self._run = run
        # Eager map: every task is submitted already, in input order.
        self._tasks = list(run.pending)
        self._on_ready = on_ready
        self._next = 0
        self._lock = threading.Lock()
        self._claimed = False

    def start(self) -> None:
        # On the callback thread, never in the thread that settles a future
        # (a library's own): reading a failed map cancels the work left,
        # which must not happen in a thread the pool needs.
        for task in self._tasks:
            task.future.add_done_callback(self._on_task_done)
        if not self._tasks:
            self._on_task_done(None)

    def _on_task_done(self, _future: Future[Any] | None) -> None:
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
        self._on_ready(self._run.results())


def _succeeded(future: Future[Any]) -> bool:
    """Whether a map task is done with every one of its items run."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    outcome = future.result()
    return not (isinstance(outcome, ChunkResult) and outcome.error is not None)
