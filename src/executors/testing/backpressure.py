"""Backpressure: ``create(max_pending=N)``, checked on any backend.

``submit`` blocks while ``N`` of its futures are unfinished, and:

* resumes as soon as one of them finishes, or is cancelled;
* wakes with the stdlib's ``"cannot schedule new futures after shutdown"``
  when the executor is shut down meanwhile;
* lets a ``KeyboardInterrupt`` in the blocked caller propagate at once;
* raises a ``RuntimeError`` instead of blocking when a task of the
  executor, in its own thread, submits at the limit (it would hold a worker
  that the futures it waits for may need);
* leaves ``map`` alone: a map is bounded by its own ``buffersize`` and
  neither counts against ``max_pending`` nor waits for it.

A backend's test module inherits :class:`BackpressureContract` and provides
the ``executor_factory`` fixture, as for every class of
:mod:`executors.testing`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import tasks
from ._support import BOUND, ContractBase, ExecutorFactory

__all__ = ["BackpressureContract"]

#: Seconds within which a Ctrl-C must stop a blocked submit: at once, not
#: once a slot is free (the tasks that hold them run until released).
PROMPT_SECONDS = 2.0


class _Gate:
    """Tasks that hold their slots until the test releases them.

    Each runs until ``release()`` creates the file it waits for, so a
    submit that did not block is seen returning while they still run,
    whatever the load, and no test sleeps longer than it needs.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "released"

    def hold(self, executor: Any, value: Any) -> Any:
        """Submit a task that returns ``value`` once released."""
        return executor.submit(tasks.wait_for_path, str(self.path), value, BOUND)

    def release(self) -> None:
        self.path.touch()


class _Submitter(threading.Thread):
    """Calls ``submit`` in a thread; records what came back, and when."""

    def __init__(self, executor: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self.executor = executor
        self.args = args
        self.future: Any = None
        self.error: BaseException | None = None
        self.watched: list[Any] = []
        #: Which of ``watched`` were done the moment submit returned.
        self.done_at_return: list[bool] = []

    def run(self) -> None:
        try:
            self.future = self.executor.submit(*self.args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done_at_return = [f.done() for f in self.watched]


def _blocked(thread: _Submitter) -> bool:
    """True if ``thread`` is still inside submit a moment after it started."""
    thread.join(0.3)
    return thread.is_alive()


class BackpressureContract(ContractBase):
    """``max_pending``: ``submit`` waits while that many futures are unfinished."""

    @pytest.fixture
    def gate(self, make_executor: ExecutorFactory, tmp_path: Path) -> Iterator[_Gate]:
        # After make_executor, so torn down before it: the held tasks are
        # released before teardown waits for the executor's work.
        gate = _Gate(tmp_path)
        yield gate
        gate.release()

    # -- the option ---------------------------------------------------------

    def test_max_pending_is_checked_at_create(
        self, executor_factory: ExecutorFactory
    ) -> None:
        with pytest.raises(ValueError, match="max_pending must be greater than 0"):
            executor_factory(max_pending=0)
        for bad in ("2", 2.0, True):
            with pytest.raises(TypeError, match="max_pending"):
                executor_factory(max_pending=bad)

    def test_max_pending_is_reported(self, make_executor: ExecutorFactory) -> None:
        assert make_executor(max_pending=3).max_pending == 3
        assert make_executor().max_pending is None

    # -- blocking and resuming ------------------------------------------------

    def test_submit_blocks_at_the_limit_and_resumes_when_one_finishes(
        self, make_executor: ExecutorFactory, gate: _Gate
    ) -> None:
        executor = make_executor(max_pending=2)
        self.require(executor, "runs_concurrently")
        held = [gate.hold(executor, n) for n in range(2)]
        thread = _Submitter(executor, tasks.add, 1, 2)
        thread.watched = held
        thread.start()
        assert _blocked(thread), (
            "submit did not wait with max_pending futures unfinished"
        )
        assert not any(f.done() for f in held), "a held task ended unreleased"
        gate.release()
        thread.join(BOUND)
        assert not thread.is_alive(), "submit still blocked after a future finished"
        assert thread.error is None, repr(thread.error)
        assert any(thread.done_at_return), "submit returned before any slot was free"
        assert thread.future.result(timeout=BOUND) == 3
        assert [f.result(timeout=BOUND) for f in held] == [0, 1]

    def test_a_cancelled_future_frees_its_slot(
        self, make_executor: ExecutorFactory, gate: _Gate
    ) -> None:
        executor = make_executor(max_workers=1, max_pending=6)
        self.require(executor, "runs_concurrently", "cancels_queued")
        running = gate.hold(executor, "ran")
        # Behind one busy worker; a backend hands a few to its library
        # ahead (no longer cancellable), but not all five.
        queued = [executor.submit(tasks.add, n, n) for n in range(5)]
        thread = _Submitter(executor, tasks.add, 2, 3)
        thread.watched = [running]
        thread.start()
        assert _blocked(thread)
        assert any(f.cancel() for f in reversed(queued)), "no queued future cancelled"
        thread.join(BOUND)
        assert not thread.is_alive(), "cancelling a queued future freed no slot"
        assert thread.error is None, repr(thread.error)
        assert thread.done_at_return == [False], "the slot came from the running task"
        # Its task waits behind the running one, on the only worker.
        gate.release()
        assert thread.future.result(timeout=BOUND) == 5
        assert running.result(timeout=BOUND) == "ran"

    def test_a_failed_submit_keeps_no_slot(
        self, make_executor: ExecutorFactory
    ) -> None:
        # Failed futures are finished futures: each frees its slot.
        executor = make_executor(max_pending=1)
        for _ in range(3):
            future = executor.submit(tasks.raise_value_error, "no")
            with pytest.raises(ValueError, match="no"):
                future.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    # -- waking up ---------------------------------------------------------------

    def test_shutdown_wakes_a_blocked_submit_with_the_stdlib_error(
        self, make_executor: ExecutorFactory, gate: _Gate
    ) -> None:
        executor = make_executor(max_pending=1)
        self.require(executor, "runs_concurrently")
        held = gate.hold(executor, "held")
        thread = _Submitter(executor, tasks.add, 1, 2)
        thread.start()
        assert _blocked(thread)
        executor.shutdown(wait=False)
        thread.join(BOUND)
        assert not thread.is_alive(), "shutdown() did not wake the blocked submit"
        assert isinstance(thread.error, RuntimeError), repr(thread.error)
        assert str(thread.error) == "cannot schedule new futures after shutdown"
        assert thread.future is None
        # The work already accepted still runs.
        gate.release()
        assert held.result(timeout=BOUND) == "held"

    def test_ctrl_c_interrupts_a_blocked_submit(
        self, make_executor: ExecutorFactory, gate: _Gate
    ) -> None:
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signals reach the main thread only")
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            pytest.skip("SIGINT does not raise KeyboardInterrupt here")
        executor = make_executor(max_pending=1)
        self.require(executor, "runs_concurrently")
        held = gate.hold(executor, "held")
        inside = threading.Event()
        main = threading.main_thread().ident
        assert main is not None

        def interrupt() -> None:
            # Only while the main thread is in the submit: a late SIGINT
            # would stop the test run itself.
            time.sleep(0.3)
            if inside.is_set():
                signal.pthread_kill(main, signal.SIGINT)

        killer = threading.Thread(target=interrupt, daemon=True)
        start = time.monotonic()
        interrupted = False
        inside.set()
        killer.start()
        try:
            executor.submit(tasks.add, 1, 2)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            inside.clear()
            killer.join(BOUND)
        took = time.monotonic() - start
        assert interrupted, "submit returned although no slot was free"
        assert not held.done(), "the slot was freed before Ctrl-C came"
        assert took < PROMPT_SECONDS, f"Ctrl-C took {took:.1f}s to stop the submit"
        # The interrupted submit took no slot: one is free once held ends.
        gate.release()
        assert held.result(timeout=BOUND) == "held"
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    # -- a task that submits --------------------------------------------------------

    def test_a_task_submitting_under_the_limit_gets_its_result(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(max_pending=2)
        self.require(executor, "process_isolation", value=False)

        def nested() -> int:
            return int(executor.submit(tasks.add, 1, 2).result(timeout=BOUND))

        assert executor.submit(nested).result(timeout=BOUND) == 3

    def test_a_task_submitting_at_the_limit_raises_instead_of_blocking(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(max_pending=1)
        self.require(executor, "process_isolation", value=False)

        def nested() -> int:
            return int(executor.submit(tasks.add, 1, 2).result(timeout=BOUND))

        outer = executor.submit(nested)
        error = outer.exception(timeout=BOUND)
        assert isinstance(error, RuntimeError), repr(error)
        assert "max_pending=1" in str(error)
        assert "from a task of this" in str(error)
        # The executor goes on.
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4

    # -- map ------------------------------------------------------------------------

    def test_map_neither_counts_against_nor_waits_for_max_pending(
        self, make_executor: ExecutorFactory, gate: _Gate
    ) -> None:
        executor = make_executor(max_pending=1)
        concurrent = executor.capabilities.runs_concurrently
        if not concurrent:
            # Its submit runs the task before returning: an unreleased one
            # would hold the test until the gate's bound.
            gate.release()
        held = gate.hold(executor, "held")
        items = list(range(8))
        # The first result of a map arrives while the held task still holds
        # the only slot: the map did not wait for it. (The first to finish,
        # not the first in order: a backend that sends work ahead to a busy
        # worker, as queue does, may leave one item behind the held task.)
        unordered = executor.map_unordered(tasks.identity, items)
        first = next(unordered)
        assert not concurrent or not held.done(), (
            "a map waited for a max_pending slot: its tasks were submitted "
            "through the path of submit(), which takes one"
        )
        gate.release()
        assert sorted([first, *unordered]) == items
        # buffersize bounds the map on its own.
        assert list(executor.map(tasks.add, items, items, buffersize=2)) == [
            2 * n for n in items
        ]
        assert held.result(timeout=BOUND) == "held"
