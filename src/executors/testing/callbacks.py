"""Done-callbacks: one that raises, fails fast, waits, or submits more work."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from . import tasks
from ._support import (
    BOUND,
    ContractBase,
)

__all__ = [
    "CallbackContract",
]


def _shutdown_within(executor: Any, seconds: float) -> None:
    import threading

    stopper = threading.Thread(target=executor.shutdown, daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), "shutdown() hung"


class CallbackContract(ContractBase):
    """Done-callbacks cannot hurt the executor that settles their futures."""

    @pytest.mark.parametrize("raised", [SystemExit(1), KeyboardInterrupt()])
    def test_callback_raising_base_exception_loses_no_future(
        self, executor: Any, raised: BaseException
    ) -> None:
        def fail_fast(fut: Future[Any]) -> None:
            raise raised

        first = executor.submit(tasks.sleep_and_return, 0.2, "first")
        first.add_done_callback(fail_fast)
        later = [executor.submit(tasks.sleep_and_return, 0.05, i) for i in range(6)]
        assert first.result(timeout=BOUND) == "first"
        for i, fut in enumerate(later):
            assert fut.result(timeout=BOUND) == i
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        _shutdown_within(executor, BOUND)

    def test_fail_fast_callback_on_a_failed_task(self, executor: Any) -> None:
        # The "fail fast" pattern: exit as soon as any task fails.
        import sys

        failing = executor.submit(tasks.raise_value_error, "bad")
        failing.add_done_callback(lambda f: f.exception() and sys.exit(1))
        others = [executor.submit(tasks.identity, i) for i in range(4)]
        with pytest.raises(ValueError, match="bad"):
            failing.result(timeout=BOUND)
        assert [f.result(timeout=BOUND) for f in others] == [0, 1, 2, 3]
        _shutdown_within(executor, BOUND)

    def test_callback_waiting_on_another_future_does_not_deadlock(
        self, executor: Any
    ) -> None:
        self.require(executor, "runs_concurrently")
        import queue

        seen: queue.SimpleQueue[Any] = queue.SimpleQueue()
        first = executor.submit(tasks.sleep_and_return, 0.2, "first")
        second = executor.submit(tasks.sleep_and_return, 0.6, "second")

        def wait_for_second(_: Future[Any]) -> None:
            try:
                seen.put(second.result(timeout=BOUND / 3))
            except BaseException as exc:
                seen.put(exc)

        first.add_done_callback(wait_for_second)
        assert seen.get(timeout=BOUND) == "second"
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4

    def test_callback_may_submit_to_the_same_executor(self, executor: Any) -> None:
        import queue

        chained: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        first = executor.submit(tasks.identity, 1)
        first.add_done_callback(
            lambda f: chained.put(executor.submit(tasks.add, f.result(), 1))
        )
        assert chained.get(timeout=BOUND).result(timeout=BOUND) == 2
