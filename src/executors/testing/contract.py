"""The behaviour classes of the conformance suite.

Each class checks one part of the contract written in
:class:`executors.Executor`. None has a ``Test`` prefix: a backend's test
module inherits them and provides the ``executor_factory`` fixture::

    from executors.testing import SubmitContract

    class TestSubmit(SubmitContract):
        @pytest.fixture
        def executor_factory(self):
            return lambda **options: MyExecutor(max_workers=2, **options)

Tests select themselves by declared capability, never by backend name.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import signal
import time
import traceback
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError, Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .._protocol import Executor
from . import tasks
from ._support import BOUND, ContractBase, ExecutorFactory

__all__ = [
    "CallbackContract",
    "CrashContract",
    "InitializerContract",
    "MapContract",
    "ReferenceContract",
    "ShutdownContract",
    "SubmitContract",
    "TaskControlContract",
]

FuturesTimeout = futures.TimeoutError


def _full_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def occupy_workers(executor: Any, seconds: float) -> list[Future[Any]]:
    """Submit one blocking task per worker, and wait until they run."""
    blockers = [
        executor.submit(tasks.sleep_and_return, seconds, "blocker")
        for _ in range(executor.max_workers)
    ]
    deadline = time.monotonic() + BOUND
    while not all(f.running() or f.done() for f in blockers):
        assert time.monotonic() < deadline, "blocking tasks never started"
        time.sleep(0.01)
    return blockers


class SubmitContract(ContractBase):
    """``submit`` and the futures it returns."""

    def test_is_a_stdlib_executor(self, executor: Any) -> None:
        assert isinstance(executor, futures.Executor)
        assert isinstance(executor, Executor)
        assert isinstance(executor.backend, str)

    def test_returns_a_stdlib_future_with_the_result(self, executor: Any) -> None:
        fut = executor.submit(tasks.add, 2, 3)
        # The stdlib's class, or a subclass that only fixes its flaws.
        assert isinstance(fut, Future)
        assert type(fut).__module__ in {
            "concurrent.futures._base",
            "executors._futures",
        }
        assert fut.result(timeout=BOUND) == 5

    def test_falsy_exception_still_raises(self, executor: Any) -> None:
        # The stdlib's result() tests `if self._exception:` and returns None
        # for an exception whose bool() is false.
        fut = executor.submit(tasks.raise_falsy, "empty")
        with pytest.raises(tasks.FalsyError, match="empty"):
            fut.result(timeout=BOUND)
        assert isinstance(fut.exception(), tasks.FalsyError)

    def test_args_and_kwargs_pass_through(self, executor: Any) -> None:
        fut = executor.submit(tasks.echo, 1, "a", fn="f", self="s", x=None)
        assert fut.result(timeout=BOUND) == (
            (1, "a"),
            {"fn": "f", "self": "s", "x": None},
        )

    def test_exception_keeps_type_args_and_traceback(self, executor: Any) -> None:
        fut = executor.submit(tasks.raise_value_error, "bad value")
        exc = fut.exception(timeout=BOUND)
        assert type(exc) is ValueError
        assert exc.args == ("bad value", 42)
        with pytest.raises(ValueError, match="bad value"):
            fut.result()
        # In-process backends keep the live traceback; process backends chain
        # the worker's formatted traceback as __cause__. Either way the
        # failing function is named.
        assert "raise_value_error" in _full_traceback(exc)

    def test_custom_exception_type_and_attributes(self, executor: Any) -> None:
        exc = executor.submit(tasks.raise_custom, 7).exception(timeout=BOUND)
        assert isinstance(exc, tasks.CustomError)
        assert (exc.code, exc.detail) == (7, "custom failure")

    def test_system_exit_in_a_task_is_the_task_error(self, executor: Any) -> None:
        fut = executor.submit(tasks.raise_system_exit, 5)
        with pytest.raises(SystemExit):
            fut.result(timeout=BOUND)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    @pytest.mark.parametrize("fn", [None, 42, "add"])
    def test_non_callable_raises_type_error(self, executor: Any, fn: Any) -> None:
        with pytest.raises(TypeError, match="callable"):
            executor.submit(fn, 1)
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_lambda_and_closure_work(self, executor: Any) -> None:
        offset = 10
        assert executor.submit(lambda x: x + offset, 1).result(timeout=BOUND) == 11

    def test_result_timeout_while_unfinished(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        fut = executor.submit(tasks.sleep_and_return, 1.0, "late")
        with pytest.raises(FuturesTimeout):
            fut.result(timeout=0.05)
        assert fut.result(timeout=BOUND) == "late"

    def test_cancel_succeeds_on_a_queued_future(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        blockers = occupy_workers(executor, 1.0)
        queued = [executor.submit(tasks.identity, i) for i in range(8)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        with pytest.raises(CancelledError):
            queued[-1].result(timeout=BOUND)
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        for i, f in enumerate(queued[:-1]):
            if not f.cancelled():
                assert f.result(timeout=BOUND) == i

    def test_cancel_fails_on_a_running_future(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        (blocker, *_) = occupy_workers(executor, 0.5)
        assert not blocker.cancel()
        assert blocker.result(timeout=BOUND) == "blocker"

    def test_done_callbacks_fire(self, executor: Any) -> None:
        seen: list[Any] = []
        fut = executor.submit(tasks.add, 1, 2)
        fut.add_done_callback(lambda f: seen.append(f.result()))
        fut.result(timeout=BOUND)
        deadline = time.monotonic() + BOUND
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [3]

    def test_wait_and_as_completed(self, executor: Any) -> None:
        fs = [executor.submit(tasks.add, i, 1) for i in range(6)]
        done, not_done = futures.wait(fs, timeout=BOUND)
        assert not not_done
        assert sorted(f.result() for f in futures.as_completed(fs, timeout=BOUND)) == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        assert len(done) == 6

    def test_asyncio_wrap_future(self, executor: Any) -> None:
        async def main() -> Any:
            return await asyncio.wait_for(
                asyncio.wrap_future(executor.submit(tasks.add, 20, 22)), BOUND
            )

        assert asyncio.run(main()) == 42

    def test_run_in_executor(self, executor: Any) -> None:
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(
                loop.run_in_executor(executor, tasks.add, 1, 2), BOUND
            )

        assert asyncio.run(main()) == 3


class MapContract(ContractBase):
    """``map`` and ``map_unordered``."""

    @pytest.mark.parametrize("size", [8, 400])
    def test_system_exit_in_an_item_comes_after_the_earlier_values(
        self, executor: Any, size: int
    ) -> None:
        # 8 items run one per task, 400 in chunks: the chunk runner must
        # deliver the values before a SystemExit as for any exception.
        bad = size * 3 // 4
        got: list[int] = []
        with pytest.raises(SystemExit):
            for value in executor.map(
                tasks.system_exit_at, range(size), itertools.repeat(bad), timeout=BOUND
            ):
                got.append(value)
        assert got == list(range(bad))
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    @settings(
        max_examples=25,
        deadline=None,
        # Every backend's test class inherits this method, so one session
        # runs it from several classes: the design of the suite, not the
        # mistake hypothesis's differing_executors check looks for (a newer
        # check: older hypothesis versions get a harmless duplicate).
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            getattr(
                HealthCheck, "differing_executors", HealthCheck.function_scoped_fixture
            ),
        ],
    )
    @given(
        columns=st.lists(st.lists(st.integers(), max_size=40), min_size=1, max_size=3),
        extra=st.integers(min_value=0, max_value=3),
        data=st.data(),
    )
    def test_map_equals_builtin_map(
        self, executor: Any, columns: list[list[int]], extra: int, data: Any
    ) -> None:
        longest = max(len(c) for c in columns)
        chunksize = data.draw(st.integers(min_value=1, max_value=longest + extra + 1))
        expected = list(map(_sum_args, *columns))
        got = list(
            executor.map(_sum_args, *columns, chunksize=chunksize, timeout=BOUND)
        )
        assert got == expected
        assert list(executor.map(_sum_args, *columns, timeout=BOUND)) == expected

    def test_long_map_with_automatic_chunks(self, executor: Any) -> None:
        items = range(5000)
        assert list(executor.map(tasks.identity, items, timeout=BOUND)) == list(items)

    @pytest.mark.parametrize("chunksize", [0, -1])
    def test_chunksize_below_one_raises(self, executor: Any, chunksize: int) -> None:
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(tasks.identity, [1], chunksize=chunksize)

    @pytest.mark.parametrize("buffersize", [0, -3])
    def test_buffersize_below_one_raises(self, executor: Any, buffersize: int) -> None:
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(tasks.identity, [1], buffersize=buffersize)

    def test_negative_timeout_raises(self, executor: Any) -> None:
        with pytest.raises(ValueError, match="timeout"):
            executor.map(tasks.identity, [1], timeout=-1)

    def test_non_callable_raises(self, executor: Any) -> None:
        with pytest.raises(TypeError, match="callable"):
            executor.map(None, [1])

    @pytest.mark.parametrize("chunksize", [None, 1, 3])
    def test_failure_raises_at_its_position(
        self, executor: Any, chunksize: Any
    ) -> None:
        results = executor.map(tasks.fail_on, range(10), [4] * 10, chunksize=chunksize)
        got = []
        with pytest.raises(ValueError, match="item 4 is bad"):
            for value in results:
                got.append(value)
        assert got == [0, 1, 2, 3]

    def test_timeout_counts_from_the_call(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        # Warm up first: the bound is on the map, not on starting workers.
        assert executor.submit(tasks.identity, 0).result(timeout=BOUND) == 0
        results = executor.map(tasks.sleep_and_return, [0.0, 5.0], [1, 2], timeout=1.5)
        time.sleep(2.5)
        # The deadline has passed: a finished result is still yielded, an
        # unfinished one raises at once instead of waiting another 1.5 s.
        assert next(results) == 1
        start = time.monotonic()
        with pytest.raises(FuturesTimeout):
            next(results)
        assert time.monotonic() - start < 1.0

    @pytest.mark.parametrize("buffersize", [1, 2, 7])
    def test_buffersize_bounds_items_read_ahead(
        self, executor: Any, buffersize: int
    ) -> None:
        pulled = 0

        def source() -> Any:
            nonlocal pulled
            for i in itertools.count():
                pulled += 1
                yield i

        results = executor.map(tasks.identity, source(), buffersize=buffersize)
        assert pulled <= buffersize
        for yielded, value in enumerate(results, start=1):
            assert value == yielded - 1
            assert pulled - yielded <= buffersize
            if yielded == 50:
                break
        results.close()

    def test_unordered_map_yields_every_result(self, executor: Any) -> None:
        got = list(executor.map_unordered(tasks.identity, range(300), timeout=BOUND))
        assert sorted(got) == list(range(300))

    def test_unordered_map_is_bounded(self, executor: Any) -> None:
        pulled = 0

        def source() -> Any:
            nonlocal pulled
            for i in itertools.count():
                pulled += 1
                yield i

        results = executor.map_unordered(tasks.identity, source(), buffersize=4)
        for yielded, _ in enumerate(results, start=1):
            assert pulled - yielded <= 4
            if yielded == 30:
                break
        results.close()

    def test_unordered_map_yields_fast_results_first(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        got = list(
            executor.map_unordered(
                tasks.sleep_and_return, [1.0, 0.0], ["slow", "fast"], timeout=BOUND
            )
        )
        assert got == ["fast", "slow"]

    def test_empty_input(self, executor: Any) -> None:
        assert list(executor.map(tasks.identity, [])) == []
        assert list(executor.map_unordered(tasks.identity, [], buffersize=3)) == []

    def test_lambda_in_map(self, executor: Any) -> None:
        assert list(executor.map(lambda x: x * 2, range(5), timeout=BOUND)) == [
            0,
            2,
            4,
            6,
            8,
        ]

    def test_input_read_eagerly_without_buffersize(self, executor: Any) -> None:
        pulled = 0

        def source() -> Any:
            nonlocal pulled
            for i in range(20):
                pulled += 1
                yield i

        results = executor.map(tasks.identity, source())
        assert pulled == 20
        assert list(results) == list(range(20))

    def test_progress_bar_counts_items(
        self, executor: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pytest.importorskip("tqdm")
        got = list(executor.map(tasks.identity, range(40), chunksize=8, progress=True))
        assert got == list(range(40))
        assert "40/40" in capsys.readouterr().err


def _sum_args(*args: int) -> int:
    return sum(args)


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

    def test_shutdown_is_idempotent(self, executor: Any) -> None:
        executor.shutdown()
        executor.shutdown()
        executor.shutdown(wait=False, cancel_futures=True)

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


class InitializerContract(ContractBase):
    """``initializer`` / ``initargs``."""

    def test_initializer_runs_in_every_worker(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.record_init, initargs=("ready",))
        fs = [executor.submit(tasks.sleep_and_return, 0.05, None) for _ in range(6)]
        fs += [executor.submit(tasks.read_init) for _ in range(20)]
        results = [f.result(timeout=BOUND) for f in fs[6:]]
        assert results == ["ready"] * 20

    def test_failing_initializer_breaks_the_executor(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.failing_init)
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 1).result(timeout=BOUND)
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 2).result(timeout=BOUND)


CRASHES = {
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


def _shutdown_within(executor: Any, seconds: float) -> None:
    import threading

    stopper = threading.Thread(target=executor.shutdown, daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), "shutdown() hung"


def _collected(ref: Any, seconds: float = BOUND) -> bool:
    import gc

    if ref() is None:
        # Freed by its reference count: no full collection needed (one
        # costs tens of milliseconds in a test process).
        return True
    deadline = time.monotonic() + seconds
    while True:
        gc.collect()
        if ref() is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


class ReferenceContract(ContractBase):
    """The executor keeps nothing alive that the caller has let go of."""

    def test_no_reference_to_a_finished_task_callable(self, executor: Any) -> None:
        import weakref

        holder = tasks.Holder("value", size=1 << 20)
        ref = weakref.ref(holder)
        fut = executor.submit(holder.get)
        assert fut.result(timeout=BOUND) == "value"
        del holder
        # The future is still held: it must not hold the callable either.
        assert _collected(ref), "the executor kept the task's callable alive"
        del fut

    def test_no_reference_to_a_finished_task_argument(self, executor: Any) -> None:
        import weakref

        holder = tasks.Holder("value")
        ref = weakref.ref(holder)
        fut = executor.submit(tasks.identity, holder)
        assert fut.result(timeout=BOUND).value == "value"
        del holder
        if not executor.capabilities.process_isolation:
            fut = None  # in-process, the result *is* the argument
        assert _collected(ref), "the executor kept the task's argument alive"

    @pytest.mark.parametrize("size", [10, 400])
    def test_map_keeps_no_yielded_result(self, executor: Any, size: int) -> None:
        import weakref

        results = executor.map(tasks.make_holder, range(size), timeout=BOUND)
        # No enumerate(): it keeps its last (index, value) tuple for reuse.
        index = -1
        for value in results:
            index += 1
            assert value.value == index
            if index in (0, size // 2):
                ref = weakref.ref(value)
                del value
                assert _collected(ref, 5.0), (
                    f"map kept result {index} alive after yielding it"
                )

    # Each way a map runs its items: one task per item (a short input with
    # the default chunksize, and always with timeout=), fixed chunks, guided
    # chunks (a longer input), lazy reading, and completion order.
    _MAP_PATHS: dict[str, tuple[dict[str, Any], int | None]] = {
        "default": ({}, 8),
        "timeout": ({"timeout": 4 * BOUND}, 8),
        "chunksize": ({"chunksize": 4}, 8),
        "guided_chunks": ({}, None),
        "buffersize": ({"buffersize": 2}, 8),
        "unordered": ({"unordered": True}, 8),
    }

    @pytest.mark.parametrize("path", list(_MAP_PATHS))
    def test_map_frees_every_result_as_it_is_yielded(
        self, executor: Any, path: str
    ) -> None:
        # CPython's test_free_reference, on every map path: each value,
        # the last one included, is freed once the caller drops it, while
        # the map is still open.
        import weakref

        from .. import _map

        options, size = self._MAP_PATHS[path]
        options = dict(options)
        if size is None:  # past one task per item: guided chunks
            size = (_map.PER_ITEM_ITEMS_PER_WORKER + 4) * executor.max_workers
        unordered = options.pop("unordered", False)
        run = executor.map_unordered if unordered else executor.map
        results = run(tasks.make_holder, range(size), **options)
        seen: set[int] = set()
        for value in results:
            seen.add(value.value)
            ref = weakref.ref(value)
            del value
            assert _collected(ref, 5.0), (
                f"map ({path}) kept a result alive after yielding it "
                f"({len(seen)} of {size} yielded)"
            )
        assert seen == set(range(size))


class TaskControlContract(ContractBase):
    """Timeouts, retries and stopping work (``capabilities.task_control``)."""

    @pytest.fixture(autouse=True)
    def _only_with_task_control(self, executor: Any) -> None:
        self.require(executor, "task_control")

    # -- stopping everything -------------------------------------------------

    @pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
    def test_stopping_the_workers_resolves_every_future(
        self, executor: Any, how: str
    ) -> None:
        self.require(executor, "runs_concurrently")
        finished = executor.submit(tasks.add, 1, 1)
        assert finished.result(timeout=BOUND) == 2
        # Threads cannot be stopped: keep what they abandon short.
        seconds = 30.0 if executor.capabilities.terminates_workers else 1.0
        running = occupy_workers(executor, seconds)
        queued = [executor.submit(tasks.sleep_and_return, seconds, i) for i in range(4)]
        start = time.monotonic()
        getattr(executor, how)()
        assert time.monotonic() - start < BOUND / 2, f"{how}() was not bounded"
        _, pending = futures.wait([*running, *queued], timeout=BOUND / 2)
        assert not pending, f"{len(pending)} futures left pending after {how}()"
        assert finished.result() == 2
        for fut in running:
            if executor.capabilities.terminates_workers or not fut.cancelled():
                with pytest.raises(BrokenExecutor):
                    fut.result()
        for fut in queued:
            # Queued work is cancelled; a call already handed to the library
            # (a window ahead of the workers) fails instead.
            if not fut.cancelled():
                with pytest.raises(BrokenExecutor):
                    fut.result()
        with pytest.raises(RuntimeError):
            executor.submit(tasks.add, 1, 1)

    # -- timeouts ------------------------------------------------------------

    def test_a_task_past_its_timeout_fails_and_the_executor_lives_on(
        self, executor: Any
    ) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options
        from .._errors import TaskTimeoutError

        slow = executor.submit(
            with_options(tasks.sleep_and_return, timeout=0.5), 5.0, "late"
        )
        start = time.monotonic()
        with pytest.raises(TaskTimeoutError, match="0.5 s") as caught:
            slow.result(timeout=BOUND)
        assert time.monotonic() - start < 4.0
        assert caught.value.timeout == 0.5
        stopped = executor.capabilities.stops_timed_out_tasks
        assert ("stopped" in str(caught.value)) == stopped
        assert executor.submit(tasks.add, 2, 3).result(timeout=BOUND) == 5

    def test_the_clock_starts_when_the_task_starts(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options

        # Queued behind busy workers for longer than the limit, each task
        # still gets its full limit once it runs.
        blockers = occupy_workers(executor, 2.5)
        quick = with_options(tasks.sleep_and_return, timeout=2.0)
        later = [executor.submit(quick, 0.05, i) for i in range(2)]
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        assert [f.result(timeout=BOUND) for f in later] == [0, 1]

    def test_map_applies_the_timeout_to_each_item(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        from .._control import with_options
        from .._errors import TaskTimeoutError

        # Generous for the quick items: a loaded machine is slow to start
        # a task, and only the 8 s item may time out.
        fn = with_options(tasks.sleep_and_return, timeout=2.0)
        got: list[Any] = []
        with pytest.raises(TaskTimeoutError):
            for value in executor.map(fn, [0.01, 0.01, 8.0, 0.01], range(4)):
                got.append(value)
        assert got == [0, 1]

    # -- retries ---------------------------------------------------------------

    def test_a_listed_exception_is_retried(self, executor: Any, tmp_path: Any) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=1, retry_on=tasks.Flaky)
        assert (
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)
            == "ok"
        )

    def test_an_unlisted_exception_is_not_retried(
        self, executor: Any, tmp_path: Any
    ) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=3, retry_on=KeyError)
        with pytest.raises(tasks.Flaky):
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)

    def test_a_task_that_always_fails_reports_its_attempts(
        self, executor: Any, tmp_path: Any
    ) -> None:
        from .._control import with_options

        log = tmp_path / "attempts"
        fn = with_options(
            tasks.count_and_fail, retries=2, retry_on=tasks.Flaky, retry_delay=0.05
        )
        with pytest.raises(tasks.Flaky) as caught:
            executor.submit(fn, str(log)).result(timeout=BOUND)
        assert log.read_text().count("attempt") == 3
        assert getattr(caught.value, "attempts", None) == 3

    def test_a_dead_worker_is_retried_where_the_backend_survives_it(
        self, executor: Any, tmp_path: Any
    ) -> None:
        self.require(executor, "process_isolation", "survives_worker_death")
        from .._control import with_options

        fn = with_options(tasks.die_first, retries=1)
        assert (
            executor.submit(fn, str(tmp_path / "once"), "ok").result(timeout=BOUND)
            == "ok"
        )

    def test_map_retries_each_item(self, executor: Any, tmp_path: Any) -> None:
        from .._control import with_options

        fn = with_options(tasks.fail_first, retries=1, retry_on=tasks.Flaky)
        paths = [str(tmp_path / f"item{i}") for i in range(6)]
        assert list(executor.map(fn, paths, range(6), timeout=BOUND)) == list(range(6))

    # -- kill_task, asyncio --------------------------------------------------------

    def test_kill_task_stops_one_running_task(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently")
        from .._errors import TaskKilledError

        caps = executor.capabilities
        seconds = 30.0 if caps.kills_single_task or caps.terminates_workers else 1.0
        target, *_ = occupy_workers(executor, seconds)
        killed = executor.kill_task(target)
        assert killed == executor.capabilities.kills_single_task
        if killed:
            with pytest.raises(TaskKilledError):
                target.result(timeout=BOUND)
            assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3
        executor.kill_workers()  # the other blockers: do not wait at teardown

    def test_asyncio_cancellation_cancels_queued_work(self, executor: Any) -> None:
        self.require(executor, "runs_concurrently", "cancels_queued")
        from .. import aio

        blockers = occupy_workers(executor, 1.0)
        # Enough work ahead that the awaited call waits in the executor's
        # queue, whatever window a backend hands to its library.
        fillers = [executor.submit(tasks.sleep_and_return, 0.1, i) for i in range(16)]
        queued: list[Future[Any]] = []

        async def main() -> None:
            task = asyncio.ensure_future(
                aio.submit(executor, tasks.sleep_and_return, 0.1, "queued")
            )
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        original = executor.submit

        def spy(*args: Any, **kwargs: Any) -> Future[Any]:
            fut: Future[Any] = original(*args, **kwargs)
            queued.append(fut)
            return fut

        executor.submit = spy
        try:
            asyncio.run(main())
        finally:
            del executor.submit
        assert queued and queued[0].cancelled()
        for f in blockers:
            assert f.result(timeout=BOUND) == "blocker"
        assert [f.result(timeout=BOUND) for f in fillers] == list(range(16))
