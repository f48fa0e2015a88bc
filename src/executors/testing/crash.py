"""Workers that die: in the task, from outside, after shutdown, mid-transfer.

:class:`CrashContract` checks the basic promise (the dead worker's future
fails with a ``BrokenExecutor``; nothing hangs; unpicklable arguments and
results fail only their own future). :class:`WorkerCrashContract` is the
crash matrix, judged against what the backend declares (see
:mod:`executors.testing._faults`). Both need ``process_isolation``.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError, Future
from pathlib import Path
from typing import Any

import pytest

from . import tasks
from ._faults import (
    ACCEPTED,
    OTHERS,
    FaultBase,
    after_worker_death,
    check_after,
    check_others,
    check_worker_death,
    error_of,
    kind_of,
    settle,
    started,
)
from ._support import (
    BOUND,
    ContractBase,
    wait_for_file,
)

__all__ = [
    "CRASHES",
    "CrashContract",
    "WorkerCrashContract",
]


#: Bigger than any OS pipe buffer (64 KiB on Linux), so crashes happen while
#: the feeder threads and result pipes are full.
BIG = 512 * 1024


CRASHES: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
    "os._exit": (tasks.exit_abruptly, (3,)),
    "SIGKILL": (tasks.kill_self, (signal.SIGKILL,)),
    "segfault": (tasks.segfault, ()),
}


class CrashContract(ContractBase):
    """Worker crashes and pickling failures (process backends only)."""

    @pytest.fixture(autouse=True)
    def _only_process_backends(self, executor: Any) -> None:
        self.require(executor, "process_isolation")

    @pytest.mark.parametrize("crash", list(CRASHES))
    def test_crash_fails_the_future_with_broken_executor(
        self, executor: Any, crash: str
    ) -> None:
        fn, args = CRASHES[crash]
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        fut = executor.submit(fn, *args)
        with pytest.raises(BrokenExecutor):
            fut.result(timeout=BOUND)
        if executor.capabilities.survives_worker_death:
            assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4
        else:
            with pytest.raises(BrokenExecutor):
                executor.submit(tasks.add, 2, 2).result(timeout=BOUND)

    def test_other_futures_resolve_when_a_worker_dies(self, executor: Any) -> None:
        others = [executor.submit(tasks.sleep_and_return, 0.1, i) for i in range(6)]
        crash = executor.submit(tasks.exit_abruptly, 3)
        more = [executor.submit(tasks.identity, i) for i in range(6)]
        with pytest.raises(BrokenExecutor):
            crash.result(timeout=BOUND)
        for i, fut in enumerate([*others, *more]):
            # Resolved either way: a result, or the pool's failure. Never lost.
            exc = fut.exception(timeout=BOUND)
            if executor.capabilities.survives_worker_death:
                assert exc is None
                assert fut.result() == i % 6
            elif exc is not None:
                assert isinstance(exc, BrokenExecutor)

    @pytest.mark.parametrize("arg", [tasks.UnpicklableArg(), "lock"])
    def test_unpicklable_argument_fails_its_future(
        self, executor: Any, arg: Any
    ) -> None:
        import threading

        if arg == "lock":
            arg = threading.Lock()
        try:
            fut = executor.submit(tasks.identity, arg)
            with pytest.raises((TypeError, pickle.PicklingError)):
                fut.result(timeout=BOUND)
        except (TypeError, pickle.PicklingError):
            pass  # raised by submit itself: just as good
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    @pytest.mark.parametrize("size", [10, 400])
    def test_map_raises_an_unpicklable_item_at_its_position(
        self, executor: Any, size: int
    ) -> None:
        # 10 items run one per task; 400 run in chunks, where the chunk
        # holding the item fails to pickle (in the caller or in a thread
        # of the backend): every value before it still arrives, in order.
        bad = size * 3 // 4
        items: list[Any] = list(range(size))
        items[bad] = tasks.UnpicklableArg()
        got: list[Any] = []
        with pytest.raises((TypeError, pickle.PicklingError)):
            for value in executor.map(tasks.identity, items, timeout=BOUND):
                got.append(value)
        assert got == list(range(len(got)))
        # One item per task: exactly the items before it; in chunks, up to
        # its chunk at least (the queue backend finds the item itself).
        assert len(got) == bad if size == 10 else len(got) <= bad
        assert list(executor.map(tasks.add, [1, 2], [3, 4], timeout=BOUND)) == [4, 6]

    def test_one_fault_one_exception_type(self, executor: Any) -> None:
        # The same fault raises the same class on every backend: the error
        # the unpickling raised, when only the task is lost; a
        # WorkerCrashedError when its worker died.
        from .._errors import WorkerCrashedError

        arg = executor.submit(tasks.identity, tasks.FailsToUnpickle())
        with pytest.raises(RuntimeError, match="raised while being unpickled") as got:
            arg.result(timeout=BOUND)
        assert not isinstance(got.value, BrokenExecutor), got.value
        result = executor.submit(tasks.return_unloadable)
        with pytest.raises(RuntimeError, match="cannot be unpickled") as got:
            result.result(timeout=BOUND)
        assert not isinstance(got.value, BrokenExecutor), got.value
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        crashed = executor.submit(tasks.exit_abruptly, 3)
        with pytest.raises(WorkerCrashedError):
            crashed.result(timeout=BOUND)

    def test_unpicklable_result_fails_its_future(self, executor: Any) -> None:
        fut = executor.submit(tasks.return_lock)
        with pytest.raises((TypeError, pickle.PicklingError)):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


class WorkerCrashContract(FaultBase):
    """Workers that die: in the task, from outside, after shutdown, mid-transfer."""

    @pytest.mark.parametrize("crash", list(CRASHES))
    def test_task_kills_its_worker(
        self, executor: Any, crash: str, observe: Callable[[str], None]
    ) -> None:
        self.require(executor, "process_isolation")
        fn, args = CRASHES[crash]
        started(executor)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        fut = executor.submit(fn, *args)
        others += [(executor.submit(tasks.identity, i), i) for i in range(OTHERS)]
        observe(
            check_worker_death(executor, fut, others, "a task that killed its worker")
        )

    def test_system_exit_is_the_task_error(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        started(executor)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        fut = executor.submit(tasks.raise_system_exit, 5)
        others += [(executor.submit(tasks.identity, i), i) for i in range(OTHERS)]
        exc = error_of(fut)
        assert isinstance(exc, SystemExit), f"SystemExit(5) in a task gave {exc!r}"
        assert exc.code == 5
        summary = check_others(executor, others, worker_died=False)
        after = check_after(executor, broken_required=False)
        observe(f"SystemExit; others: {summary}; then {after}")

    def test_worker_killed_from_outside_mid_task(
        self, executor: Any, tmp_path: Path, observe: Callable[[str], None]
    ) -> None:
        self.require(executor, "process_isolation")
        started(executor)
        pidfile = tmp_path / "pid"
        fut = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 2.0, "ran")
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        pid = int(wait_for_file(pidfile))
        assert pid != os.getpid(), "the task ran in the test process"
        os.kill(pid, signal.SIGKILL)
        exc = error_of(fut)
        if executor.capabilities.retries_lost_tasks:
            assert exc is None, f"a task lost once was not retried: {exc!r}"
            assert fut.result() == "ran"
            outcome = "retried: ok"
        else:
            assert isinstance(exc, ACCEPTED["worker death"]), (
                f"a task whose worker was SIGKILLed gave {exc!r}"
            )
            outcome = type(exc).__name__
        summary = check_others(executor, others, worker_died=True)
        after = after_worker_death(executor)
        observe(f"{outcome}; others: {summary}; then {after}")

    @pytest.mark.parametrize(
        ("wait", "cancel"),
        [(True, False), (False, False), (True, True)],
        ids=["wait", "no-wait", "cancel-futures"],
    )
    def test_worker_crashes_after_shutdown_was_called(
        self, executor: Any, wait: bool, cancel: bool, observe: Callable[[str], None]
    ) -> None:
        self.require(executor, "process_isolation")
        started(executor)
        crash = executor.submit(tasks.busy_then_exit, 0.3, 3)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        start = time.monotonic()
        executor.shutdown(wait=wait, cancel_futures=cancel)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
        if wait:
            unfinished = [f for f in [crash, *(f for f, _ in others)] if not f.done()]
            assert not unfinished, (
                f"shutdown(wait=True) returned with {len(unfinished)} futures pending"
            )
        exc = error_of(crash)
        if isinstance(exc, CancelledError):
            assert cancel, "a future was cancelled that nobody cancelled"
        else:
            assert isinstance(exc, ACCEPTED["worker death"]), (
                f"a task that exited after shutdown() gave {exc!r}"
            )
        summary = check_others(executor, others, worker_died=True, cancelled_ok=cancel)
        with pytest.raises((RuntimeError, BrokenExecutor)):
            executor.submit(tasks.identity, 1)
        observe(f"{type(exc).__name__}; others: {summary}; shutdown {took:.1f}s")

    @pytest.mark.parametrize("flow", ["big-payloads", "exit-mid-send"])
    def test_crash_with_more_than_a_pipe_buffer_in_flight(
        self, executor: Any, flow: str, observe: Callable[[str], None]
    ) -> None:
        self.require(executor, "process_isolation")
        started(executor)
        payload = b"x" * BIG
        others: list[tuple[Future[Any], Any]] = []
        crash: Future[Any] | None = None
        sender: Future[Any] | None = None
        for i in range(OTHERS):
            if flow == "big-payloads":
                # Big both ways: the argument fills the call pipe, the result
                # the result pipe.
                others.append((executor.submit(tasks.identity, payload), payload))
                if i == OTHERS // 2:
                    crash = executor.submit(tasks.exit_abruptly, 3)
            else:
                others.append((executor.submit(tasks.big_payload, BIG), payload))
                if i == OTHERS // 2:
                    # Exits 1 ms after returning 8 MiB: most likely while the
                    # result is still being written.
                    sender = executor.submit(tasks.exit_while_sending, 16 * BIG, 0.001)
        settle([f for f in (crash, sender) if f is not None])
        if crash is not None:
            exc = error_of(crash)
            assert isinstance(exc, ACCEPTED["worker death"]), (
                f"a task that killed its worker gave {exc!r}"
            )
            outcome = type(exc).__name__
        else:
            assert sender is not None
            exc = error_of(sender)
            if exc is None:
                ok = len(sender.result()) == 16 * BIG
                assert ok, "exit_while_sending returned a truncated result"
            else:
                assert isinstance(exc, ACCEPTED["worker death"]), (
                    f"a worker that died mid-send gave {exc!r}"
                )
            outcome = f"sender {kind_of(sender)}"
        summary = check_others(executor, others, worker_died=True)
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
        observe(f"{outcome}; others: {summary}")
