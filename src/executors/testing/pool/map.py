"""``map``, ``starmap``, ``map_async``, ``imap`` and ``imap_unordered``."""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import multiprocessing.pool
import pickle
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from ...pool import Pool
from .. import tasks
from .._support import (
    BOUND,
)
from ._base import (
    PoolContractBase,
    SayWhen,
    SizedButFailing,
    failing_input,
    square,
)

__all__ = [
    "PoolImapContract",
    "PoolMapContract",
]


class PoolMapContract(PoolContractBase):
    """``map``, ``map_async``, ``starmap`` and ``starmap_async``."""

    def test_map_equals_builtin_map(self, shared_pool: Pool) -> None:
        assert shared_pool.map(square, range(10)) == [i * i for i in range(10)]
        assert shared_pool.map(square, list(range(100)), chunksize=20) == [
            i * i for i in range(100)
        ]
        assert shared_pool.map_async(square, range(10)).get(timeout=BOUND) == [
            i * i for i in range(10)
        ]

    def test_starmap_unpacks_each_item(self, shared_pool: Pool) -> None:
        pairs = list(zip(range(10), range(9, -1, -1), strict=True))
        expected = list(itertools.starmap(tasks.add, pairs))
        assert shared_pool.starmap(tasks.add, pairs) == expected
        many = list(zip(range(100), range(99, -1, -1), strict=True))
        assert shared_pool.starmap(tasks.add, many, chunksize=20) == [99] * 100
        assert (
            shared_pool.starmap_async(tasks.add, many).get(timeout=BOUND) == [99] * 100
        )

    def test_empty_input(self, shared_pool: Pool) -> None:
        assert shared_pool.map(square, []) == []
        assert shared_pool.map_async(square, [], chunksize=1).get(timeout=BOUND) == []
        assert list(shared_pool.imap(square, [])) == []
        assert list(shared_pool.imap_unordered(square, [])) == []
        assert shared_pool.starmap(tasks.add, []) == []

    def test_failing_task_raises_its_error_and_the_pool_goes_on(
        self, shared_pool: Pool
    ) -> None:
        with pytest.raises(ValueError, match="item 3 is bad"):
            shared_pool.starmap(tasks.fail_on, [(i, 3) for i in range(8)])
        result = shared_pool.map_async(int, ["1", "x", "3"])
        with pytest.raises(ValueError):
            result.get(timeout=BOUND)
        assert not result.successful()
        assert shared_pool.map(square, range(3)) == [0, 1, 4]

    def test_an_error_of_the_input_is_raised_as_it_is(self, shared_pool: Pool) -> None:
        # Raised in the caller, where the input is read; never wrapped as
        # an error from a worker, and the pool stays usable (reentrant).
        for _ in range(2):
            with pytest.raises(SayWhen) as info:
                shared_pool.map(square, failing_input(1, -1), 1)
            assert info.value.__cause__ is None
        with pytest.raises(SayWhen):
            shared_pool.map(square, failing_input(10, 3), 1)
        with pytest.raises(SayWhen):
            shared_pool.map(square, SizedButFailing(), 1)
        with pytest.raises(SayWhen):
            shared_pool.map_async(square, SizedButFailing(), 1).get(timeout=BOUND)
        assert shared_pool.map(square, [2]) == [4]

    def test_unpicklable_item_raises(self, shared_pool: Pool) -> None:
        # CPython bpo-19425: this used to hang the stdlib's shared_pool.
        self.require_pool(shared_pool, "process_isolation")
        with pytest.raises((TypeError, pickle.PicklingError)):
            shared_pool.map(tasks.identity, [tasks.UnpicklableArg()] * 10)
        assert shared_pool.map(square, [3]) == [9]

    def test_arguments_and_results_are_released(self, shared_pool: Pool) -> None:
        # CPython bpo-29861: a map kept its tasks' arguments and results
        # alive after it returned. (Sets: picklable, and weakly referable.)
        objs = [{i} for i in range(10)]
        refs = [weakref.ref(o) for o in objs]
        results = shared_pool.map(tasks.identity, objs, 3)
        assert results == objs
        refs += [weakref.ref(r) for r in results]
        result = shared_pool.map_async(tasks.identity, objs)
        async_values = result.get(timeout=BOUND)
        refs += [weakref.ref(r) for r in async_values]
        del objs, results, result, async_values
        deadline = time.monotonic() + BOUND
        while any(ref() is not None for ref in refs):
            # Released by a backend's own thread a moment later, at most.
            assert time.monotonic() < deadline, "a map keeps its items alive"
            gc.collect()
            time.sleep(0.05)

    def test_a_failed_map_then_close_and_join_return(self, pool: Pool) -> None:
        # CPython bpo-23992: after a failing map, join() deadlocked while a
        # worker still had results to send.
        start = time.monotonic()
        with pytest.raises(ValueError, match="item 0 is bad"):
            pool.starmap(tasks.fail_on, [(i, 0) for i in range(50)], 1)
        pool.close()
        pool.join()
        assert time.monotonic() - start < BOUND

    def test_chunksize_below_one_raises(self, shared_pool: Pool) -> None:
        with pytest.raises(ValueError):
            shared_pool.map(square, [1, 2], chunksize=0)
        with pytest.raises(ValueError, match="Chunksize must be 1"):
            shared_pool.imap(square, [1, 2], chunksize=0)

    @pytest.mark.slow
    @pytest.mark.timeout(20 * BOUND)
    def test_pending_map_async_calls_start_no_thread_each(self, pool: Pool) -> None:
        # A thread per pending call used to make 1,000 calls cost 1,000
        # threads. Every worker is kept busy, so the calls stay pending.
        self.require_pool(pool, "runs_concurrently")
        workers = pool.executor.max_workers
        busy = [
            pool.apply_async(tasks.sleep_and_return, (3.0, i)) for i in range(workers)
        ]
        baseline = threading.active_count()
        peak = baseline
        results = []
        for i in range(1000):
            if i % 2:
                results.append(pool.map_async(square, [i]))
            else:
                results.append(pool.starmap_async(tasks.add, [(i, 0)]))
            if i % 50 == 0:
                peak = max(peak, threading.active_count())
        peak = max(peak, threading.active_count())
        assert peak - baseline < 20, f"{peak - baseline} threads more"
        assert sum(r.ready() for r in results) < 1000
        # A thousand tasks take Dask or Celery half a minute on a busy
        # machine: one deadline for all of them.
        deadline = time.monotonic() + 15 * BOUND
        values = [r.get(timeout=max(0.0, deadline - time.monotonic())) for r in results]
        assert values == [[i * i if i % 2 else i] for i in range(1000)]
        assert [r.get(timeout=BOUND) for r in busy] == list(range(workers))

    def test_map_async_error_callback_gets_the_first_error_once(
        self, shared_pool: Pool
    ) -> None:
        # Items 2 and 5 fail; the first in input order is the one reported,
        # once, and before the result is ready (as the stdlib's order).
        calls: list[tuple[str, Any, bool]] = []
        result: Any = None

        def on_error(exc: BaseException) -> None:
            calls.append(("error", exc, result is not None and result.ready()))

        def on_value(value: Any) -> None:
            calls.append(("value", value, True))

        items = [(i, 2) if i != 5 else (5, 5) for i in range(8)]
        result = shared_pool.starmap_async(
            tasks.fail_on, items, 1, callback=on_value, error_callback=on_error
        )
        with pytest.raises(ValueError, match="item 2 is bad") as info:
            result.get(timeout=BOUND)
        assert len(calls) == 1
        kind, error, was_ready = calls[0]
        assert kind == "error"
        assert error is info.value
        assert not was_ready
        assert not result.successful()
        seen: list[Any] = []
        done = shared_pool.map_async(square, range(30), 4, callback=seen.append)
        assert done.get(timeout=BOUND) == [i * i for i in range(30)]
        assert seen == [[i * i for i in range(30)]]


class PoolImapContract(PoolContractBase):
    """``imap`` and ``imap_unordered``: lazy, bounded, ``next(timeout)``."""

    def test_imap_in_order(self, shared_pool: Pool) -> None:
        assert list(shared_pool.imap(square, range(10))) == [i * i for i in range(10)]
        it = shared_pool.imap(square, range(10))
        for i in range(10):
            assert next(it) == i * i
        with pytest.raises(StopIteration):
            next(it)
        it = shared_pool.imap(square, range(1000), chunksize=100)
        for i in range(1000):
            assert it.next() == i * i
        with pytest.raises(StopIteration):
            it.next()

    def test_imap_unordered_yields_every_result(self, shared_pool: Pool) -> None:
        expected = [i * i for i in range(10)]
        assert sorted(shared_pool.imap_unordered(square, range(10))) == expected
        it = shared_pool.imap_unordered(square, range(1000), chunksize=100)
        assert sorted(it) == [i * i for i in range(1000)]

    def test_imap_raises_an_input_error_at_its_chunk(self, shared_pool: Pool) -> None:
        it = shared_pool.imap(square, failing_input(1, -1), 1)
        with pytest.raises(SayWhen):
            next(it)
        it = shared_pool.imap(square, failing_input(10, 3), 1)
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(SayWhen):
            next(it)
        # The chunk being read when the input failed is lost, as in the
        # stdlib: chunks of 2 fail at item 7 after items 0-5.
        it = shared_pool.imap(square, failing_input(20, 7), 2)
        assert [next(it) for _ in range(6)] == [i * i for i in range(6)]
        with pytest.raises(SayWhen):
            next(it)
        it = shared_pool.imap(square, failing_input(20, 7), 4)
        assert [next(it) for _ in range(4)] == [i * i for i in range(4)]
        with pytest.raises(SayWhen):
            next(it)
        with pytest.raises(StopIteration):
            next(it)

    def test_imap_unordered_raises_an_input_error(self, shared_pool: Pool) -> None:
        it = shared_pool.imap_unordered(square, failing_input(1, -1), 1)
        with pytest.raises(SayWhen):
            next(it)
        expected = [i * i for i in range(10)]
        with pytest.raises(SayWhen):
            for value in shared_pool.imap_unordered(square, failing_input(10, 3), 1):
                expected.remove(value)
        assert len(expected) == 7

    def test_imap_reads_its_input_lazily(self, shared_pool: Pool) -> None:
        # The stdlib's imap reads the whole input at once; this one keeps a
        # few chunks per worker ahead of the caller: an endless input works.
        pulled = 0

        def endless() -> Iterator[int]:
            nonlocal pulled
            for i in itertools.count():
                pulled += 1
                yield i

        it = shared_pool.imap(square, endless(), chunksize=2)
        assert list(itertools.islice(it, 20)) == [i * i for i in range(20)]
        bound = 2 * 4 * shared_pool.executor.max_workers
        assert pulled <= 20 + bound + 2, pulled
        it.close()

    def test_next_with_timeout(self, shared_pool: Pool) -> None:
        self.require_pool(shared_pool, "runs_concurrently")
        it = shared_pool.imap(tasks.sleep_and_return, [0.5, 0.0])
        start = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        assert time.monotonic() - start < BOUND / 3
        # The timed-out item is not lost: the next call returns it.
        assert it.next(timeout=BOUND) is None
        assert it.next(timeout=BOUND) is None
        with pytest.raises(StopIteration):
            it.next(timeout=BOUND)
