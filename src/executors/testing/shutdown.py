"""``shutdown``, the context manager, and Ctrl-C.

:class:`ShutdownContract` is what the stdlib promises;
:class:`ShutdownFaultContract` is what must still hold when shutdown meets
cancelled futures, a second call, or a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any

import pytest

from .._errors import ExecutorInterruptedError
from . import tasks
from ._faults import (
    FaultBase,
    settle,
    summarize,
)
from ._support import (
    BOUND,
    ContractBase,
    ExecutorFactory,
    child_processes,
    occupy_workers,
    wait_for_no_new_children,
)

__all__ = [
    "ShutdownContract",
    "ShutdownFaultContract",
]


class ShutdownContract(ContractBase):
    """``shutdown`` and the context manager."""

    def test_wait_true_returns_when_work_is_done(self, executor: Any) -> None:
        fs = [executor.submit(tasks.sleep_and_return, 0.2, i) for i in range(4)]
        executor.shutdown(wait=True)
        assert all(f.done() for f in fs)
        assert [f.result() for f in fs] == [0, 1, 2, 3]

    def test_wait_false_returns_at_once_and_work_completes(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        fs = [executor.submit(tasks.sleep_and_return, 0.5, i) for i in range(4)]
        executor.shutdown(wait=False)
        assert not all(f.done() for f in fs), "shutdown(wait=False) waited for the work"
        assert [f.result(timeout=BOUND) for f in fs] == [0, 1, 2, 3]

    def test_cancel_futures_cancels_queued_work(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        blockers = occupy_workers(executor, 0.5)
        queued = [executor.submit(tasks.identity, i) for i in range(10)]
        executor.shutdown(wait=True, cancel_futures=True)
        assert queued[-1].cancelled()
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        for f in queued:
            assert f.done()

    def test_shutdown_is_idempotent(self, make_executor: ExecutorFactory) -> None:
        before = child_processes()
        executor = make_executor()
        finished = executor.submit(tasks.add, 1, 2)
        assert finished.result(timeout=BOUND) == 3
        executor.shutdown()
        executor.shutdown()
        executor.shutdown(wait=False, cancel_futures=True)
        # The later calls keep what the first one did: the executor still
        # refuses work with the stdlib's message, the finished future keeps
        # its result (cancel_futures touches no finished future), and no
        # worker came back.
        refused = "cannot schedule new futures after shutdown"
        with pytest.raises(RuntimeError, match=refused):
            executor.submit(tasks.identity, 1)
        with pytest.raises(RuntimeError, match=refused):
            executor.map(tasks.identity, [1])
        assert not finished.cancelled()
        assert finished.result(timeout=0) == 3
        leftover = wait_for_no_new_children(before)
        assert not leftover, (
            f"worker processes alive after repeated shutdowns: {sorted(leftover)}"
        )

    def test_submit_after_shutdown_raises(self, executor: Any) -> None:
        executor.shutdown()
        with pytest.raises(
            RuntimeError, match="cannot schedule new futures after shutdown"
        ):
            executor.submit(tasks.identity, 1)

    def test_map_after_shutdown_raises(self, executor: Any) -> None:
        executor.shutdown()
        with pytest.raises(
            RuntimeError, match="cannot schedule new futures after shutdown"
        ):
            executor.map(tasks.identity, [1, 2])

    def test_a_task_that_shuts_its_own_executor_down_does_not_hang(
        self, executor: Any
    ) -> None:
        # Only where a task can hold its executor (it runs in this process).
        # Waiting would mean waiting for itself: it returns (inline) or
        # raises RuntimeError, as the stdlib's thread pool does; either way
        # the shutdown stands.
        self.require(executor, "process_isolation", value=False)

        def shut_own_executor_down() -> str:
            try:
                executor.shutdown(wait=True)
            except RuntimeError:
                return "raised"
            return "returned"

        outcome = executor.submit(shut_own_executor_down).result(timeout=BOUND)
        assert outcome in ("raised", "returned")
        with pytest.raises(
            RuntimeError, match="cannot schedule new futures after shutdown"
        ):
            executor.submit(tasks.identity, 1)

    def test_context_manager_waits(self, make_executor: ExecutorFactory) -> None:
        with make_executor() as ex:
            fs = [ex.submit(tasks.sleep_and_return, 0.2, i) for i in range(3)]
        assert all(f.done() for f in fs)
        with pytest.raises(RuntimeError):
            ex.submit(tasks.identity, 1)


class ShutdownFaultContract(FaultBase):
    """Shutdown paths that hang on naive pools: cancelled waits, Ctrl-C."""

    @pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
    def test_wait_and_as_completed_see_futures_cancelled_by_shutdown(
        self, executor: Any, wait: bool
    ) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        blockers = occupy_workers(executor, 0.5)
        queued = [executor.submit(tasks.identity, i) for i in range(10)]
        executor.shutdown(wait=wait, cancel_futures=True)
        # CPython gh-109934: the stdlib pools cancel without notifying, and
        # wait()/as_completed() then never return.
        settle([*blockers, *queued])
        assert len(list(futures.as_completed(queued, timeout=BOUND))) == len(queued)
        assert queued[-1].cancelled()

    def test_shutdown_wait_after_shutdown_no_wait_still_waits(
        self, executor: Any
    ) -> None:
        self.require(executor, "runs_concurrently")
        fs = [executor.submit(tasks.sleep_and_return, 0.3, i) for i in range(4)]
        executor.shutdown(wait=False)
        executor.shutdown(wait=True)
        unfinished = [f for f in fs if not f.done()]
        assert not unfinished, (
            f"shutdown(wait=True) after shutdown(wait=False) returned with "
            f"{len(unfinished)} tasks unfinished"
        )

    def test_ctrl_c_in_a_with_block_stops_the_work(
        self, make_executor: ExecutorFactory, observe: Callable[[str], None]
    ) -> None:
        """``KeyboardInterrupt`` leaving ``with``: queued work is dropped and,
        where tasks run in other processes, running ones are stopped too."""
        fs: list[Future[Any]] = []
        with pytest.raises(KeyboardInterrupt):
            with make_executor() as executor:
                caps = executor.capabilities
                if caps.runs_concurrently:
                    # A process can be stopped mid-task; a thread cannot, so
                    # in-process backends get tasks short enough to finish.
                    seconds = 20.0 if caps.process_isolation else 0.3
                    fs = occupy_workers(executor, seconds)
                    fs += [executor.submit(tasks.identity, i) for i in range(10)]
                start = time.monotonic()
                raise KeyboardInterrupt
        took = time.monotonic() - start
        assert took < BOUND, f"leaving the with block took {took:.1f}s"
        unfinished = [f for f in fs if not f.done()]
        assert not unfinished, f"{len(unfinished)} futures left unresolved"
        # One fault, one exception class: a running task that Ctrl-C stopped
        # raises ExecutorInterruptedError on every backend.
        stopped = [f.exception() for f in fs if not f.cancelled() and f.exception()]
        wrong = [e for e in stopped if not isinstance(e, ExecutorInterruptedError)]
        assert not wrong, (
            f"a task stopped by Ctrl-C raised {type(wrong[0]).__name__}, not "
            f"ExecutorInterruptedError: {wrong[0]!r}"
        )
        observe(f"exited in {took:.1f}s; {summarize(fs) or 'nothing pending'}")
