"""The fault-tolerance suite: crashes, pickling failures, bad input, leaks.

Every case here asks the same two questions of a backend: does every future
resolve within :data:`~executors.testing.BOUND` (nothing hangs, nothing is
silently lost), and does the outcome match what the backend *declares*? The
expected outcome is derived from :class:`executors.Capabilities` and the
contract written in :class:`executors.Executor`, never from the backend's
name:

* A worker that dies (``os._exit``, a signal, a segfault, in the task, while
  unpickling its argument or while pickling its result) fails the future it
  held with a :class:`~concurrent.futures.BrokenExecutor` subclass. With
  ``survives_worker_death`` every other future completes normally and the
  executor stays usable; without it every other future still resolves (its
  result, or a ``BrokenExecutor``) and the executor is broken for good. With
  ``retries_lost_tasks`` a task killed once from outside is run again and
  succeeds.
* A failure that kills no worker (an argument or a result that cannot be
  pickled) fails its own future with the pickling error and nothing else.
* Where the contract allows two outcomes (an argument that raises while it
  is unpickled in the worker may surface as that error or as a broken
  executor), the test accepts the documented set and records which one the
  backend chose; ``scripts/semantics_table.py`` publishes the record.

Observations are attached to the test report as the ``observed`` user
property, so the published table says *what happened*, not only "passed".

A backend reuses these classes exactly like the ones in
:mod:`executors.testing.contract`: inherit and provide ``executor_factory``.
"""

from __future__ import annotations

import gc
import inspect
import os
import pickle
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError, Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .._errors import ExecutorInterruptedError
from . import tasks
from ._support import BOUND, ContractBase, ExecutorFactory, wait_for_file
from .contract import occupy_workers

__all__ = [
    "ACCEPTED",
    "BadInputContract",
    "InitializerFaultContract",
    "LeakContract",
    "PicklingFaultContract",
    "ShutdownFaultContract",
    "WorkerCrashContract",
]

#: The documented outcomes of each fault, by case. A future that a case
#: affects must raise one of these; docs/fault-tolerance.md mirrors this table.
ACCEPTED: dict[str, tuple[type[BaseException], ...]] = {
    # A worker died: always an infrastructure failure.
    "worker death": (BrokenExecutor,),
    # Pickling in the caller failed: the pickler's own error, raised by
    # submit() or set on the future.
    "argument fails to pickle": (TypeError, pickle.PicklingError),
    # The error raised inside the worker passes through like a task error,
    # or the backend reports its worker as broken (the stdlib pool does).
    "argument raises while unpickled": (RuntimeError, BrokenExecutor),
    # The task ran; sending its result back failed: the task's error.
    "result fails to pickle": (TypeError, pickle.PicklingError),
    "result raises while pickled": (ValueError, TypeError, pickle.PicklingError),
    # The caller could not load the result: the loading error, or a broken
    # executor (the stdlib pool breaks when its result pipe yields garbage).
    "result fails to unpickle": (RuntimeError, BrokenExecutor),
}

#: Futures submitted around each fault, to prove none of them is lost.
OTHERS = 4

#: Bigger than any OS pipe buffer (64 KiB on Linux), so crashes happen while
#: the feeder threads and result pipes are full.
BIG = 512 * 1024

CRASHES: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
    "os._exit": (tasks.exit_abruptly, (3,)),
    "SIGKILL": (tasks.kill_self, (signal.SIGKILL,)),
    "segfault": (tasks.segfault, ()),
}


# -- helpers ----------------------------------------------------------------


def _kind(fut: Future[Any]) -> str:
    """``"ok"``, ``"cancelled"`` or the exception's type name, for a done future."""
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception(timeout=0)
    return "ok" if exc is None else type(exc).__name__


def settle(futs: Iterable[Future[Any]]) -> None:
    """Wait until every future is done; fail if any is not within the bound."""
    futs = list(futs)
    _, not_done = futures.wait(futs, timeout=BOUND)
    silent = [f for f in not_done if f.cancelled()]
    assert not silent, (
        f"{len(silent)} futures were cancelled without notifying their waiters: "
        "concurrent.futures.wait() and as_completed() hang on them "
        "(CPython gh-109934; see executors._base.notify_cancelled)"
    )
    assert not not_done, (
        f"{len(not_done)} of {len(futs)} futures unresolved after {BOUND:.0f}s: "
        "lost or hung"
    )


def error_of(fut: Future[Any]) -> BaseException | None:
    """The future's exception within the bound (``CancelledError`` if cancelled)."""
    try:
        return fut.exception(timeout=BOUND)
    except futures.TimeoutError:
        pytest.fail(f"the affected future did not resolve within {BOUND:.0f}s")
    except CancelledError as exc:
        return exc


def summarize(futs: Iterable[Future[Any]]) -> str:
    """For example ``"10 ok, 2 BrokenProcessPool"``."""
    counts = Counter(_kind(f) for f in futs)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def check_others(
    executor: Any,
    others: list[tuple[Future[Any], Any]],
    *,
    worker_died: bool,
    cancelled_ok: bool = False,
) -> str:
    """Check the futures submitted around a fault; return a summary.

    Args:
        executor: The executor under test.
        others: Each future with the value it must produce if it succeeds.
        worker_died: The fault killed a worker. Without
            ``survives_worker_death`` the others may then fail with a
            ``BrokenExecutor``; otherwise each must succeed.
        cancelled_ok: A cancelled future counts as resolved (after
            ``shutdown(cancel_futures=True)``).
    """
    settle(f for f, _ in others)
    strict = not worker_died or executor.capabilities.survives_worker_death
    for fut, expected in others:
        if fut.cancelled():
            assert cancelled_ok, "a future was cancelled that nobody cancelled"
            continue
        exc = fut.exception()
        if exc is None:
            ok = fut.result() == expected
            assert ok, "a future completed with the wrong value"
        elif strict:
            raise AssertionError(
                "a future unrelated to the fault failed with "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        else:
            assert isinstance(exc, BrokenExecutor), (
                f"a future failed with {type(exc).__name__}, not BrokenExecutor"
            )
    return summarize(f for f, _ in others)


def check_after(executor: Any, *, broken_required: bool) -> str:
    """Check what a new ``submit`` does after a fault; return ``usable``/``broken``.

    Args:
        executor: The executor under test.
        broken_required: The executor must be broken (a worker died and the
            backend does not declare ``survives_worker_death``); otherwise it
            must be usable.
    """
    try:
        fut = executor.submit(tasks.add, 2, 2)
    except BrokenExecutor:
        assert broken_required, "the executor is broken after a fault that should not"
        return "broken"
    exc = error_of(fut)
    if exc is None:
        assert not broken_required, (
            "a worker died, the backend does not declare survives_worker_death, "
            "yet the executor still runs tasks"
        )
        assert fut.result() == 4
        return "usable"
    assert isinstance(exc, BrokenExecutor), (
        f"a task after the fault failed with {type(exc).__name__}: {exc}"
    )
    assert broken_required, "the executor is broken after a fault that should not"
    return "broken"


def after_worker_death(executor: Any) -> str:
    """``check_after`` when a worker died: broken unless declared otherwise."""
    return check_after(
        executor, broken_required=not executor.capabilities.survives_worker_death
    )


def after_maybe_broken(executor: Any, error: BaseException | None) -> str:
    """``check_after`` when the backend chose between task error and breakage.

    A task-level error must leave the executor usable; a ``BrokenExecutor``
    may leave it broken unless the backend declares ``survives_worker_death``.
    """
    if isinstance(error, BrokenExecutor) and not (
        executor.capabilities.survives_worker_death
    ):
        try:
            fut = executor.submit(tasks.add, 2, 2)
        except BrokenExecutor:
            return "broken"
        exc = error_of(fut)
        if exc is None:
            return "usable"
        assert isinstance(exc, BrokenExecutor)
        return "broken"
    return check_after(executor, broken_required=False)


def _started(executor: Any) -> None:
    """Run one task, so workers exist before the fault is injected."""
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2


class FaultBase(ContractBase):
    """Shared fixtures of the fault classes."""

    @pytest.fixture
    def observe(self, request: pytest.FixtureRequest) -> Callable[[str], None]:
        """Record what the backend did, for the published semantics table."""

        def record(text: str) -> None:
            request.node.user_properties.append(("observed", text))

        return record


# -- the crash matrix -------------------------------------------------------


class WorkerCrashContract(FaultBase):
    """Workers that die: in the task, from outside, after shutdown, mid-transfer."""

    @pytest.mark.parametrize("crash", list(CRASHES))
    def test_task_kills_its_worker(
        self, executor: Any, crash: str, observe: Callable[[str], None]
    ) -> None:
        self.require(executor, "process_isolation")
        fn, args = CRASHES[crash]
        _started(executor)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        fut = executor.submit(fn, *args)
        others += [(executor.submit(tasks.identity, i), i) for i in range(OTHERS)]
        exc = error_of(fut)
        assert isinstance(exc, ACCEPTED["worker death"]), (
            f"a task that killed its worker gave {exc!r}, not BrokenExecutor"
        )
        summary = check_others(executor, others, worker_died=True)
        after = after_worker_death(executor)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    def test_system_exit_is_the_task_error(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        _started(executor)
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
        _started(executor)
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
        _started(executor)
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
        _started(executor)
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
            outcome = f"sender {_kind(sender)}"
        summary = check_others(executor, others, worker_died=True)
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
        observe(f"{outcome}; others: {summary}")


# -- shutdown and Ctrl-C ---------------------------------------------------


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


# -- pickling failures ------------------------------------------------------


def _unpicklable_argument(kind: str) -> Any:
    return tasks.UnpicklableArg() if kind == "raising-reduce" else threading.Lock()


class PicklingFaultContract(FaultBase):
    """Arguments and results that fail to (un)pickle, harmlessly or fatally."""

    @pytest.fixture(autouse=True)
    def _needs_pickling(self, executor: Any) -> None:
        self.require(executor, "process_isolation")

    def _surround(
        self, executor: Any, fn: Callable[..., Any], *args: Any
    ) -> tuple[Future[Any] | BaseException, list[tuple[Future[Any], Any]]]:
        """Submit ``fn(*args)`` between other tasks; submit() may raise."""
        _started(executor)
        others = [
            (executor.submit(tasks.sleep_and_return, 0.05, i), i) for i in range(OTHERS)
        ]
        try:
            fut: Future[Any] | BaseException = executor.submit(fn, *args)
        except Exception as exc:
            fut = exc
        others += [(executor.submit(tasks.identity, i), i) for i in range(OTHERS)]
        return fut, others

    @pytest.mark.parametrize("kind", ["raising-reduce", "lock"])
    def test_argument_fails_to_pickle(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fut, others = self._surround(
            executor, tasks.identity, _unpicklable_argument(kind)
        )
        where = "submit()" if isinstance(fut, BaseException) else "future"
        exc = fut if isinstance(fut, BaseException) else error_of(fut)
        assert isinstance(exc, ACCEPTED["argument fails to pickle"]), (
            f"an unpicklable argument gave {exc!r}"
        )
        summary = check_others(executor, others, worker_died=False)
        after = check_after(executor, broken_required=False)
        observe(f"{type(exc).__name__} from {where}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["raises", "exits", "segfaults"])
    def test_argument_breaks_while_unpickled_in_worker(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        arg = {
            "raises": tasks.FailsToUnpickle(),
            "exits": tasks.ExitsOnUnpickle(),
            "segfaults": tasks.SegfaultsOnUnpickle(),
        }[kind]
        fut, others = self._surround(executor, tasks.identity, arg)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        if kind == "raises":
            assert isinstance(exc, ACCEPTED["argument raises while unpickled"]), (
                f"an argument that raises while unpickled gave {exc!r}"
            )
            if not isinstance(exc, BrokenExecutor):  # a RuntimeError subclass
                assert "FailsToUnpickle" in str(exc)
            died = isinstance(exc, BrokenExecutor)
            summary = check_others(executor, others, worker_died=died)
            after = after_maybe_broken(executor, exc)
        else:
            assert isinstance(exc, ACCEPTED["worker death"]), (
                f"an argument that kills the worker while unpickled gave {exc!r}"
            )
            summary = check_others(executor, others, worker_died=True)
            after = after_worker_death(executor)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["lock", "raising-reduce"])
    def test_result_fails_to_pickle(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fn = tasks.return_lock if kind == "lock" else tasks.return_raises_on_pickle
        case = (
            "result fails to pickle"
            if kind == "lock"
            else ("result raises while pickled")
        )
        fut, others = self._surround(executor, fn)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        assert isinstance(exc, ACCEPTED[case]), f"{case}: gave {exc!r}"
        summary = check_others(executor, others, worker_died=False)
        after = check_after(executor, broken_required=False)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    @pytest.mark.parametrize("kind", ["exits", "segfaults"])
    def test_result_kills_worker_while_pickled(
        self, executor: Any, kind: str, observe: Callable[[str], None]
    ) -> None:
        fn = (
            tasks.return_exits_on_pickle
            if kind == "exits"
            else tasks.return_segfaults_on_pickle
        )
        fut, others = self._surround(executor, fn)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        assert isinstance(exc, ACCEPTED["worker death"]), (
            f"a result that kills the worker while pickled gave {exc!r}"
        )
        summary = check_others(executor, others, worker_died=True)
        after = after_worker_death(executor)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")

    def test_result_fails_to_unpickle_in_caller(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        fut, others = self._surround(executor, tasks.return_unloadable)
        assert isinstance(fut, Future), f"submit() raised {fut!r}"
        exc = error_of(fut)
        assert isinstance(exc, ACCEPTED["result fails to unpickle"]), (
            f"a result that cannot be unpickled in the caller gave {exc!r}"
        )
        if not isinstance(exc, BrokenExecutor):  # a RuntimeError subclass
            assert "cannot be unpickled" in str(exc)
        died = isinstance(exc, BrokenExecutor)
        summary = check_others(executor, others, worker_died=died)
        after = after_maybe_broken(executor, exc)
        observe(f"{type(exc).__name__}; others: {summary}; then {after}")


# -- initializers -----------------------------------------------------------

INITIALIZERS: dict[str, Callable[[], None]] = {
    "raises": tasks.failing_init,
    "exits": tasks.exiting_init,
    "segfaults": tasks.segfaulting_init,
}


class InitializerFaultContract(FaultBase):
    """An initializer that raises or kills its worker breaks the executor."""

    @pytest.mark.parametrize("kind", list(INITIALIZERS))
    def test_initializer_fails(
        self,
        make_executor: ExecutorFactory,
        kind: str,
        observe: Callable[[str], None],
    ) -> None:
        if kind != "raises":
            # Read the capabilities before creating: an in-process backend
            # would run this initializer in the test process itself.
            self.require(make_executor(), "process_isolation")
        executor = make_executor(initializer=INITIALIZERS[kind])
        names: set[str] = set()
        refused = 0
        futs: list[Future[Any]] = []
        for i in range(4):
            try:
                futs.append(executor.submit(tasks.identity, i))
            except BrokenExecutor as broken:
                names.add(type(broken).__name__)
                refused += 1
        settle(futs)
        for fut in futs:
            exc = fut.exception()
            assert isinstance(exc, BrokenExecutor), (
                f"a task of an executor whose initializer {kind} gave "
                f"{'its result' if exc is None else repr(exc)}"
            )
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 9).result(timeout=BOUND)
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
        names.update(type(f.exception()).__name__ for f in futs)
        observe(
            f"{'/'.join(sorted(names))}; {len(futs)} futures failed, "
            f"{refused} submits refused"
        )


# -- bad input --------------------------------------------------------------

_BAD_CALLS: list[tuple[str, Callable[[Any], Any], type[Exception], str]] = [
    ("submit(None)", lambda ex: ex.submit(None), TypeError, "callable"),
    ("submit(42)", lambda ex: ex.submit(42, 1), TypeError, "callable"),
    ("map(None)", lambda ex: ex.map(None, [1]), TypeError, "callable"),
    ("map_unordered(None)", lambda ex: ex.map_unordered(None, [1]), TypeError, ""),
    ("map(non-iterable)", lambda ex: ex.map(tasks.identity, 5), TypeError, ""),
    (
        "map_unordered(non-iterable)",
        lambda ex: ex.map_unordered(tasks.identity, 5, buffersize=2),
        TypeError,
        "",
    ),
    (
        "map(chunksize=0)",
        lambda ex: ex.map(tasks.identity, [1], chunksize=0),
        ValueError,
        "chunksize",
    ),
    (
        "map(chunksize=-1)",
        lambda ex: ex.map(tasks.identity, [1], chunksize=-1),
        ValueError,
        "chunksize",
    ),
    (
        "map(chunksize='2')",
        lambda ex: ex.map(tasks.identity, [1], chunksize="2"),
        TypeError,
        "chunksize",
    ),
    (
        "map(chunksize=1.5)",
        lambda ex: ex.map(tasks.identity, [1], chunksize=1.5),
        TypeError,
        "chunksize",
    ),
    (
        "map(chunksize=True)",
        lambda ex: ex.map(tasks.identity, [1], chunksize=True),
        TypeError,
        "chunksize",
    ),
    (
        "map(buffersize=0)",
        lambda ex: ex.map(tasks.identity, [1], buffersize=0),
        ValueError,
        "buffersize",
    ),
    (
        "map(buffersize='x')",
        lambda ex: ex.map(tasks.identity, [1], buffersize="x"),
        TypeError,
        "buffersize",
    ),
    (
        "map(buffersize=2.0)",
        lambda ex: ex.map(tasks.identity, [1], buffersize=2.0),
        TypeError,
        "buffersize",
    ),
    (
        "map(timeout=-1)",
        lambda ex: ex.map(tasks.identity, [1], timeout=-1),
        ValueError,
        "timeout",
    ),
    (
        "map(timeout='1')",
        lambda ex: ex.map(tasks.identity, [1], timeout="1"),
        TypeError,
        "timeout",
    ),
    (
        "map_unordered(chunksize=0)",
        lambda ex: ex.map_unordered(tasks.identity, [1], chunksize=0),
        ValueError,
        "chunksize",
    ),
    (
        "map_unordered(buffersize=-2)",
        lambda ex: ex.map_unordered(tasks.identity, [1], buffersize=-2),
        ValueError,
        "buffersize",
    ),
    (
        "map_unordered(timeout=-0.5)",
        lambda ex: ex.map_unordered(tasks.identity, [1], timeout=-0.5),
        ValueError,
        "timeout",
    ),
]

_AFTER_SHUTDOWN: list[tuple[str, Callable[[Any], Any]]] = [
    ("submit", lambda ex: ex.submit(tasks.identity, 1)),
    ("map", lambda ex: ex.map(tasks.identity, [1, 2])),
    ("map lazy", lambda ex: ex.map(tasks.identity, [1, 2], buffersize=2)),
    ("map_unordered", lambda ex: ex.map_unordered(tasks.identity, [1, 2])),
]

# Values hypothesis tries for any option: right and wrong types, in and out
# of range. Callables are module-level so that they pickle by reference.
_OPTION_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        -1,
        0,
        1,
        2,
        2.5,
        "",
        "spawn",
        "forkserver",
        "not-a-thing",
        (),
        (1,),
        [1],
        {},
        tasks.noop,
        object(),
    ]
)
# Values that are right for the common options, so that combinations which
# should work are drawn often enough to be exercised too.
_GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "max_workers": st.sampled_from([None, 1, 2]),
    "initializer": st.sampled_from([None, tasks.noop]),
    "initargs": st.sampled_from([(), (1,)]),
    "mp_context": st.sampled_from([None, "spawn", "forkserver"]),
    "max_tasks_per_child": st.sampled_from([None, 1, 3]),
    "cloudpickle": st.booleans(),
}
_COMMON_OPTIONS = [
    "max_workers",
    "initializer",
    "initargs",
    "mp_context",
    "max_tasks_per_child",
    "cloudpickle",
    "no_such_option",
]
#: Clean rejections of a bad option.
OPTION_ERRORS = (TypeError, ValueError, LookupError)


def _option_names(cls: type) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    own = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return sorted({*_COMMON_OPTIONS, *own})


def _run_bounded(fn: Callable[[], Any], bound: float) -> Any:
    """Run ``fn`` in a thread; fail the test if it does not return in time."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound)
    assert box, f"the call did not return within {bound:.0f}s: it hangs"
    status, value = box[0]
    if status == "raised":
        raise value
    return value


class BadInputContract(FaultBase):
    """Every entry point rejects bad input with a clear error and stays usable."""

    def test_every_entry_point_rejects_bad_input(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        problems: list[str] = []
        for name, call, kind, match in _BAD_CALLS:
            try:
                call(executor)
            except kind as exc:
                if not str(exc) or match not in str(exc):
                    problems.append(f"{name}: unclear message {str(exc)!r}")
            except Exception as exc:
                problems.append(f"{name}: raised {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{name}: did not raise {kind.__name__}")
            # Usable after every rejection, not only after the last one.
            fut = executor.submit(tasks.add, 1, 2)
            if fut.result(timeout=BOUND) != 3:
                problems.append(f"{name}: the executor is not usable afterwards")
        assert not problems, "\n".join(problems)
        observe(f"{len(_BAD_CALLS)} bad calls rejected")

    def test_every_entry_point_raises_after_shutdown(self, executor: Any) -> None:
        executor.shutdown(wait=True)
        for _name, call in _AFTER_SHUTDOWN:
            with pytest.raises(
                RuntimeError, match="cannot schedule new futures after shutdown"
            ):
                call(executor)
        executor.shutdown()  # still idempotent after the failed calls

    @settings(
        max_examples=25,
        deadline=None,
        # differing_executors: every backend's class inherits this method
        # (older hypothesis versions lack the check; a duplicate is harmless).
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            getattr(HealthCheck, "differing_executors", HealthCheck.too_slow),
        ],
    )
    @given(data=st.data())
    def test_random_options_work_or_raise_cleanly(
        self, executor: Any, make_executor: ExecutorFactory, data: Any
    ) -> None:
        names = data.draw(
            st.lists(
                st.sampled_from(_option_names(type(executor))), max_size=4, unique=True
            ),
            label="names",
        )
        options = {
            name: data.draw(
                st.one_of(_GOOD_VALUES.get(name, st.nothing()), _OPTION_VALUES),
                label=name,
            )
            for name in names
        }

        def attempt() -> str:
            try:
                created = make_executor(**options)
            except OPTION_ERRORS as exc:
                assert str(exc), f"{type(exc).__name__} without a message"
                return "rejected"
            try:
                fut = created.submit(tasks.add, 1, 2)
                assert fut.result(timeout=BOUND) == 3
            finally:
                created.shutdown(wait=True)
            return "works"

        event(_run_bounded(attempt, 3 * BOUND))


# -- leaks ------------------------------------------------------------------


def _resources() -> tuple[int, int]:
    import psutil

    gc.collect()
    return psutil.Process().num_fds(), threading.active_count()


class LeakContract(FaultBase):
    """Creating and shutting down executors returns every fd and thread.

    The bound is on the total growth over the cycles, not on a rate: with
    no slack, a backend that keeps one fd or one thread per executor fails
    after the first counted cycle, so the cycles beyond that are for leaks
    that happen only sometimes (a race in shutdown), not for the bound.

    Attributes:
        leak_cycles: How many create/submit/shutdown cycles to run.
        leak_budget: Seconds after which the cycles stop early (a cluster
            backend takes seconds per cycle); at least ``min_cycles`` run.
        min_cycles: The fewest cycles that count as a test: more than either
            slack, so that a leak of one fd or thread per executor always
            exceeds it.
        fd_slack: File descriptors a backend may keep after the cycles.
        thread_slack: Threads a backend may keep after the cycles.
    """

    leak_cycles = 50
    leak_budget = 5.0
    min_cycles = 5
    fd_slack = 0
    thread_slack = 0

    @pytest.mark.slow
    @pytest.mark.timeout(300)
    def test_create_shutdown_cycles_do_not_leak(
        self, make_executor: ExecutorFactory, observe: Callable[[str], None]
    ) -> None:
        # With fewer cycles than the slack, a leak of one per executor
        # would pass unseen.
        assert self.min_cycles > max(self.fd_slack, self.thread_slack), (
            f"min_cycles={self.min_cycles} cannot show a leak of one per "
            f"executor under fd_slack={self.fd_slack}, "
            f"thread_slack={self.thread_slack}"
        )
        # Two warm-up cycles start what lives once per interpreter (the
        # forkserver, the resource tracker, a library's event-loop thread):
        # those are not per-executor leaks.
        for _ in range(2):
            self._cycle(make_executor)
        fds0, threads0 = _resources()
        start = time.monotonic()
        cycles = 0
        while cycles < self.leak_cycles:
            self._cycle(make_executor)
            cycles += 1
            over = time.monotonic() - start > self.leak_budget
            if over and cycles >= self.min_cycles:
                break
        took = time.monotonic() - start
        deadline = time.monotonic() + BOUND
        while True:
            fds, threads = _resources()
            fds_ok = fds <= fds0 + self.fd_slack
            if (fds_ok and threads <= threads0 + self.thread_slack) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        observe(
            f"{cycles} cycles in {took:.0f}s: fds {fds0}->{fds}, "
            f"threads {threads0}->{threads}"
        )
        assert fds <= fds0 + self.fd_slack, (
            f"open fds grew from {fds0} to {fds} over {cycles} cycles"
        )
        assert threads <= threads0 + self.thread_slack, (
            f"threads grew from {threads0} to {threads} over {cycles} "
            f"cycles: {sorted(t.name for t in threading.enumerate())}"
        )

    @staticmethod
    def _cycle(make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
