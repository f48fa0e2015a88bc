"""Creating, closing, joining and terminating a pool; its initializer."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import pickle
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError
from typing import Any

import pytest

from ...pool import Pool
from .. import tasks
from .._support import (
    BOUND,
    child_processes,
    wait_for_no_new_children,
)
from ._base import (
    PoolContractBase,
    PoolFactory,
    square,
)

__all__ = [
    "PoolLifecycleContract",
]


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
