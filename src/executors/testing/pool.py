"""Behaviour classes for :class:`executors.Pool`, on any backend.

They check what a program written for ``multiprocessing.Pool`` observes:
the behaviours the stdlib's own ``_TestPool`` family checks (in CPython's
``Lib/test/_test_multiprocessing.py``), restated here in the suite's terms,
plus the guarantees ``multiprocessing.Pool`` lacks (a dead worker fails its
task, ``terminate()`` fails unfinished work instead of leaving ``get()``
waiting, a failing initializer breaks the pool instead of respawning
workers forever). ``docs/coming-from-pool.md`` lists those differences.

Like the classes of :mod:`executors.testing.contract`, none has a ``Test``
prefix; a test module inherits them and provides ``executor_factory``. The
pools are built on it (``Pool(backend=executor_factory)``), so a backend
that passes the contract is tested as a ``Pool`` without anything more.
Tests select themselves by declared capability, never by backend name.
"""

from __future__ import annotations

import functools
import gc
import itertools
import multiprocessing
import multiprocessing.pool
import pickle
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures.process import _RemoteTraceback as FuturesRemoteTraceback
from typing import Any

import pytest

from ..pool import Pool
from . import tasks
from ._support import (
    BOUND,
    ContractBase,
    ExecutorFactory,
    child_processes,
    wait_for_no_new_children,
)

__all__ = [
    "PoolApplyContract",
    "PoolCrashContract",
    "PoolImapContract",
    "PoolLifecycleContract",
    "PoolMapContract",
    "PoolStdlibErrorsContract",
]

# A one-argument task that needs nothing but builtins in the worker: the
# workers never import this module (or pytest).
square = functools.partial(pow, exp=2)

PoolFactory = Callable[..., Pool]

# The stdlib's own classes, looked up by name: typeshed declares neither.
MaybeEncodingError: Any = vars(multiprocessing.pool)["MaybeEncodingError"]
PoolRemoteTraceback: Any = vars(multiprocessing.pool)["RemoteTraceback"]


class SayWhen(ValueError):
    """Raised by the caller's own input iterable, never by a task."""


def failing_input(total: int, when: int) -> Iterator[int]:
    """Yield ``0 .. total-1``, raising :class:`SayWhen` instead of ``when``."""
    if when == -1:
        raise SayWhen("the input failed before its first item")
    for i in range(total):
        if i == when:
            raise SayWhen(f"the input failed at item {i}")
        yield i


class SizedButFailing:
    """An input with a length whose iteration raises at once."""

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        raise SayWhen("sized input failed")

    def __len__(self) -> int:
        return 1


def _full_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class PoolContractBase(ContractBase):
    """Fixtures: pools built on ``executor_factory``, terminated at teardown."""

    @pytest.fixture
    def pool_factory(self, executor_factory: ExecutorFactory) -> PoolFactory:
        """Build a Pool on the backend under test, with ``Pool``'s arguments."""

        def make(*args: Any, **kwargs: Any) -> Pool:
            return Pool(*args, backend=executor_factory, **kwargs)

        return make

    @pytest.fixture
    def make_pool(self, pool_factory: PoolFactory) -> Iterator[PoolFactory]:
        """Create pools; terminate and join each at teardown, check for leaks."""
        before = child_processes()
        created: list[Pool] = []

        def make(*args: Any, **kwargs: Any) -> Pool:
            pool = pool_factory(*args, **kwargs)
            created.append(pool)
            return pool

        yield make
        for pool in created:
            start = time.monotonic()
            pool.terminate()
            pool.join()
            took = time.monotonic() - start
            assert took < BOUND, f"terminate() + join() took {took:.1f}s"
        leftover = wait_for_no_new_children(before)
        assert not leftover, f"child processes left after terminate: {leftover}"

    @pytest.fixture
    def pool(self, make_pool: PoolFactory) -> Pool:
        """A fresh pool with the backend's test defaults."""
        return make_pool()

    @pytest.fixture
    def shared_pool(self, make_pool: PoolFactory) -> Pool:
        """A pool for tests that leave it as they found it: fresh by default.

        A test module may override it to share one pool per backend between
        such tests, as the stdlib's own Pool tests share one per class:
        creating pools is most of the cost of these tests.
        """
        return make_pool()

    @staticmethod
    def require_pool(pool: Pool, *flags: str, value: bool = True) -> None:
        """Skip unless the pool's executor declares ``flags`` == ``value``."""
        ContractBase.require(pool.executor, *flags, value=value)


class PoolApplyContract(PoolContractBase):
    """``apply``, ``apply_async`` and the AsyncResult they return."""

    def test_apply_passes_args_and_kwds(self, shared_pool: Pool) -> None:
        assert shared_pool.apply(square, (5,)) == 25
        assert shared_pool.apply(tasks.add, (), {"a": 3}) == 3
        assert shared_pool.apply(tasks.add, (2,), {"b": 3}) == 5

    def test_async_result_interface(self, shared_pool: Pool) -> None:
        result = shared_pool.apply_async(tasks.sleep_and_return, (0.3, 7))
        if shared_pool.executor.capabilities.runs_concurrently:
            assert not result.ready()
            with pytest.raises(ValueError, match="not ready"):
                result.successful()
            start = time.monotonic()
            with pytest.raises(multiprocessing.TimeoutError):
                result.get(timeout=0.05)
            assert time.monotonic() - start < BOUND / 3
        assert result.get(timeout=BOUND) == 7
        assert result.ready()
        assert result.successful()
        result.wait()  # returns at once once ready

    def test_task_exception_keeps_type_args_and_traceback(
        self, shared_pool: Pool
    ) -> None:
        with pytest.raises(ValueError, match="bad value") as info:
            shared_pool.apply(tasks.raise_value_error, ("bad value",))
        assert info.value.args == ("bad value", 42)
        assert "raise_value_error" in _full_traceback(info.value)
        result = shared_pool.apply_async(tasks.raise_custom, (7,))
        result.wait(BOUND)
        assert not result.successful()
        with pytest.raises(tasks.CustomError):
            result.get(timeout=BOUND)

    def test_callback_or_error_callback_runs_before_ready(
        self, shared_pool: Pool
    ) -> None:
        seen: list[Any] = []
        shared_pool.apply_async(
            square, (4,), callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert seen == [16]
        result = shared_pool.apply_async(
            tasks.raise_value_error,
            callback=seen.append,
            error_callback=seen.append,
        )
        with pytest.raises(ValueError):
            result.get(timeout=BOUND)
        assert len(seen) == 2
        assert isinstance(seen[1], ValueError)

    def test_map_async_callbacks(self, shared_pool: Pool) -> None:
        seen: list[Any] = []
        shared_pool.map_async(
            int, ["1"], callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert seen == [[1]]
        shared_pool.map_async(
            int, ["a"], callback=seen.append, error_callback=seen.append
        ).wait(BOUND)
        assert len(seen) == 2
        assert isinstance(seen[1], ValueError)

    def test_a_callback_may_call_the_pool(self, shared_pool: Pool) -> None:
        # The stdlib's result thread waits forever here: the callback runs
        # on it, and so would the completion of the call it waits for.
        seen: list[Any] = []

        def callback(value: int) -> None:
            seen.append(shared_pool.apply(tasks.sleep_and_return, (0.2, value)))
            seen.append(shared_pool.map(square, [value]))

        first = shared_pool.apply_async(square, (3,), callback=callback)
        second = shared_pool.map_async(
            square,
            [2],
            callback=lambda v: seen.append(shared_pool.starmap(tasks.add, [(v[0], 1)])),
        )
        assert first.get(timeout=BOUND) == 9
        assert second.get(timeout=BOUND) == [4]
        assert sorted(seen, key=repr) == sorted([9, [81], [5]], key=repr)

    def test_a_failing_callback_is_logged_and_get_still_returns(
        self, shared_pool: Pool, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken_callback(_: object) -> None:
            raise RuntimeError("the callback failed")

        result = shared_pool.apply_async(square, (3,), callback=broken_callback)
        assert result.get(timeout=BOUND) == 9
        assert "the callback failed" in caplog.text


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


class PoolLifecycleContract(PoolContractBase):
    """Construction, ``close``/``join``/``terminate`` and the ``with`` block."""

    @pytest.mark.parametrize("processes", [0, -1])
    def test_fewer_than_one_process_raises(
        self, pool_factory: PoolFactory, processes: int
    ) -> None:
        with pytest.raises(ValueError, match="Number of processes"):
            pool_factory(processes)

    @pytest.mark.parametrize("value", [0, -1, 0.5, "12"])
    def test_bad_maxtasksperchild_raises(
        self, pool_factory: PoolFactory, value: Any
    ) -> None:
        with pytest.raises(ValueError, match="maxtasksperchild"):
            pool_factory(2, maxtasksperchild=value)

    def test_initializer_must_be_callable(self, pool_factory: PoolFactory) -> None:
        with pytest.raises(TypeError, match="initializer must be a callable"):
            pool_factory(2, initializer=3)

    def test_initializer_runs_in_every_worker(self, make_pool: PoolFactory) -> None:
        pool = make_pool(2, tasks.record_init, ["ready"])
        assert pool.map(tasks.read_init, range(8)) == ["ready"] * 8

    def test_failing_initializer_breaks_the_pool(self, make_pool: PoolFactory) -> None:
        # The stdlib's Pool replaces such workers forever, and map waits.
        pool = make_pool(2, tasks.failing_init)
        with pytest.raises(BrokenExecutor):
            pool.apply_async(tasks.identity, (1,)).get(timeout=BOUND)

    def test_closed_pool_refuses_work(self, pool: Pool) -> None:
        pool.close()
        calls: list[Callable[[], object]] = [
            lambda: pool.apply(square, (1,)),
            lambda: pool.apply_async(square, (1,)),
            lambda: pool.map(square, [1]),
            lambda: pool.map_async(square, [1]),
            lambda: pool.starmap(tasks.add, [(1, 2)]),
            lambda: pool.starmap_async(tasks.add, [(1, 2)]),
            lambda: pool.imap(square, [1]),
            lambda: pool.imap_unordered(square, [1]),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="Pool not running"):
                call()
        pool.join()

    def test_join_needs_close_or_terminate(self, shared_pool: Pool) -> None:
        with pytest.raises(ValueError, match="Pool is still running"):
            shared_pool.join()

    def test_close_then_join_completes_the_work(self, pool: Pool) -> None:
        results = [pool.apply_async(tasks.sleep_and_return, (0.1, i)) for i in range(4)]
        mapped = pool.map_async(square, range(20))
        lazy = pool.imap(square, range(50), chunksize=3)
        pool.close()
        assert "state=CLOSE" in repr(pool)
        # An imap started before close() still gets its remaining chunks
        # submitted, as the stdlib keeps feeding its tasks.
        assert list(lazy) == [i * i for i in range(50)]
        pool.join()
        assert all(r.ready() for r in [*results, mapped])
        assert [r.get(0) for r in results] == [0, 1, 2, 3]
        assert mapped.get(0) == [i * i for i in range(20)]

    def test_with_block_terminates_and_cannot_be_reentered(self, pool: Pool) -> None:
        with pool as entered:
            assert entered is pool
            result = pool.map_async(square, range(10))
            assert result.get(timeout=BOUND) == [i * i for i in range(10)]
        assert "TERMINATE" in repr(pool)
        with pytest.raises(ValueError, match="Pool not running"):
            pool.map_async(square, [1])
        with pytest.raises(ValueError), pool:  # bpo-35477
            pass
        pool.join()

    def test_terminate_fails_unfinished_work_and_returns_soon(self, pool: Pool) -> None:
        self.require_pool(pool, "runs_concurrently")
        # Process backends stop running tasks at once; threads cannot be
        # stopped, so their tasks are kept short.
        isolated = pool.executor.capabilities.process_isolation
        seconds = 10 * BOUND if isolated else 0.3
        result = pool.map_async(time.sleep, [seconds] * 50, chunksize=1)
        time.sleep(0.2)
        start = time.monotonic()
        pool.terminate()
        pool.join()
        assert time.monotonic() - start < BOUND / 2
        # The stdlib's get() would wait forever here.
        with pytest.raises((CancelledError, BrokenExecutor)):
            result.get(timeout=BOUND)

    def test_maxtasksperchild_with_fork_works_or_says_how(
        self, make_pool: PoolFactory
    ) -> None:
        # multiprocessing.Pool takes both; ProcessPoolExecutor refuses fork
        # with max_tasks_per_child. Either the pool honours both, or it says
        # so in Pool's terms, with the ways out.
        fork = multiprocessing.get_context("fork")
        try:
            pool = make_pool(2, maxtasksperchild=1, context=fork)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if "fork" not in message:
                # The backend takes one of the options in no form at all.
                assert "max_tasks_per_child" in message or "mp_context" in message
                pytest.skip(f"the backend refuses an option: {exc}")
            assert isinstance(exc, ValueError)
            assert message.startswith(
                "maxtasksperchild cannot be used with the 'fork' start method"
            )
            assert "context='forkserver'" in message
            assert "backend='mp_pool'" in message
            return
        results = [pool.apply_async(tasks.sleep_then_pid, (0.05,)) for _ in range(6)]
        pool.close()
        pool.join()
        assert len({r.get(0) for r in results}) > 2

    def test_max_tasks_per_child_replaces_workers(self, make_pool: PoolFactory) -> None:
        try:
            pool = make_pool(2, maxtasksperchild=1)
        except (TypeError, ValueError) as exc:
            # Refused at creation, naming the option: declared, not ignored.
            assert "max_tasks_per_child" in str(exc)
            pytest.skip(f"the backend refuses maxtasksperchild: {exc}")
        # CPython bpo-10332: closing such a pool early made join() hang.
        results = [pool.apply_async(tasks.sleep_then_pid, (0.05,)) for _ in range(6)]
        pool.close()
        pool.join()
        pids = {r.get(0) for r in results}
        assert len(pids) > 2

    def test_cannot_be_pickled(self, shared_pool: Pool) -> None:
        with pytest.raises(NotImplementedError):
            pickle.dumps(shared_pool)

    def test_repr_shows_state_backend_and_size(self, shared_pool: Pool) -> None:
        text = repr(shared_pool)
        assert "state=RUN" in text
        assert repr(shared_pool.backend) in text
        assert f"pool_size={shared_pool.executor.max_workers}" in text

    def test_dropping_a_running_pool_warns(self, pool_factory: PoolFactory) -> None:
        before = child_processes()
        pools = [pool_factory()]
        pools[0].apply(square, (2,))
        with pytest.warns(ResourceWarning, match="unclosed running"):
            pools.clear()  # the last reference
        assert not wait_for_no_new_children(before)


class PoolCrashContract(PoolContractBase):
    """A dead worker fails its task: nothing hangs (process backends)."""

    @pytest.fixture(autouse=True)
    def _only_process_backends(self, pool: Pool) -> None:
        self.require_pool(pool, "process_isolation")
        # A backend that retries a lost task kills worker after worker
        # before it gives up: slow, and covered by the fault suite.
        self.require_pool(pool, "retries_lost_tasks", value=False)

    def test_apply_async_of_a_dying_task_fails(self, pool: Pool) -> None:
        result = pool.apply_async(tasks.exit_abruptly, (3,))
        with pytest.raises(BrokenExecutor):
            result.get(timeout=BOUND)

    def test_map_with_a_dying_worker_raises_instead_of_hanging(
        self, pool: Pool
    ) -> None:
        # CPython gh-66587 / gh-96062: Pool.map waits forever here.
        start = time.monotonic()
        with pytest.raises(BrokenExecutor):
            pool.map(tasks.exit_abruptly, [3, 3])
        assert time.monotonic() - start < BOUND
        if pool.executor.capabilities.survives_worker_death:
            assert pool.map(square, range(4)) == [0, 1, 4, 9]

    def test_imap_with_a_dying_worker_raises(self, pool: Pool) -> None:
        it = pool.imap(tasks.exit_abruptly, [3])
        with pytest.raises(BrokenExecutor):
            it.next(timeout=BOUND)


class PoolStdlibErrorsContract(PoolContractBase):
    """Errors as ``multiprocessing.Pool`` raises them (process backends).

    What CPython's own Pool and ``concurrent.futures`` tests look for: a
    result the worker cannot pickle is ``MaybeEncodingError``, and the
    worker's traceback is the stdlib's remote-traceback class.
    """

    @pytest.fixture(autouse=True)
    def _only_process_backends(self, shared_pool: Pool) -> None:
        self.require_pool(shared_pool, "process_isolation")

    def test_an_unpicklable_result_is_maybe_encoding_error(
        self, shared_pool: Pool
    ) -> None:
        # CPython's test_unpickleable_result, with its error_callback; twice,
        # so a lost worker would show.
        for _ in range(2):
            seen: list[BaseException] = []
            result = shared_pool.apply_async(
                tasks.return_unpicklable, error_callback=seen.append
            )
            with pytest.raises(MaybeEncodingError) as info:
                result.get(timeout=BOUND)
            assert seen == [info.value]
            error = info.value
            assert error.exc == "TypeError('UnpicklableArg refuses to be pickled')"
            assert error.value.startswith("<executors.testing.tasks.UnpicklableArg")
            assert str(error) == (
                f"Error sending result: '{error.value}'. Reason: '{error.exc}'"
            )
            # The pickler's own error, with the worker's traceback, behind it.
            assert isinstance(error.__cause__, TypeError)
            assert "return_unpicklable" not in str(error)
            copy = pickle.loads(pickle.dumps(error))
            assert (copy.exc, copy.value) == (error.exc, error.value)
        calls: list[Callable[[], object]] = [
            lambda: shared_pool.map(tasks.return_unpicklable, range(3)),
            lambda: shared_pool.map(tasks.return_unpicklable, range(40), 8),
            lambda: shared_pool.map_async(tasks.return_unpicklable, [1]).get(BOUND),
            lambda: list(shared_pool.imap(tasks.return_unpicklable, range(3))),
            lambda: list(shared_pool.imap_unordered(tasks.return_unpicklable, [1])),
        ]
        for call in calls:
            with pytest.raises(MaybeEncodingError) as info:
                call()
            assert "UnpicklableArg refuses to be pickled" in info.value.exc
        assert shared_pool.map(square, range(4)) == [0, 1, 4, 9]

    def test_a_task_error_is_not_an_encoding_error(self, shared_pool: Pool) -> None:
        # The same exception type raised by the task itself stays as it is.
        with pytest.raises(TypeError) as info:
            shared_pool.apply(tasks.add, ("a", 1))
        assert not isinstance(info.value, MaybeEncodingError)

    def test_the_remote_traceback_is_the_stdlib_class(self, shared_pool: Pool) -> None:
        errors: list[BaseException] = []
        with pytest.raises(ValueError) as info:
            shared_pool.apply(tasks.raise_value_error, ("bad value",))
        errors.append(info.value)
        with pytest.raises(ValueError) as info:
            shared_pool.starmap(tasks.fail_on, [(i, 3) for i in range(10)], 5)
        errors.append(info.value)
        # The executor's futures, as CPython's test_concurrent_futures sees.
        future = shared_pool.executor.submit(tasks.raise_value_error, "bad value")
        error = future.exception(timeout=BOUND)
        assert error is not None
        errors.append(error)
        for error in errors:
            cause = error.__cause__
            assert isinstance(cause, PoolRemoteTraceback)
            assert isinstance(cause, FuturesRemoteTraceback)
            assert str(cause) == cause.tb
            assert "Traceback (most recent call last)" in cause.tb
            copy = pickle.loads(pickle.dumps(cause))
            assert type(copy) is type(cause)
            assert str(copy) == str(cause)
            text = _full_traceback(error)
            assert "The above exception was the direct cause" in text
            assert ("raise_value_error" in text) or ("fail_on" in text)
        # The failing source line itself, as CPython's test_traceback checks.
        assert "raise ValueError(message, 42)" in str(errors[0].__cause__)
