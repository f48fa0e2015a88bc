"""Behaviour only the ``queue`` backend has: victim-only crashes, timeouts,
retries and terminate_workers on its own pool, kill_task, chunk recovery,
max_tasks_per_child with a backlog, exit paths.

Every test uses real processes and real crashes; every wait is bounded.
Task functions that tests define here are closures, so cloudpickle sends
them by value and workers never need to import this module.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, CancelledError, Future
from pathlib import Path
from typing import Any

import psutil
import pytest

import executors
from conftest import backend_factory, wait_until
from executors import (
    InitializerFailedError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkersTerminatedError,
    with_options,
)
from executors._control import WithOptions
from executors.backends.queue import (
    QueueExecutor,
    TaskKilledError,
    TimeLimited,
    with_timeout,
)
from executors.testing import BOUND, ContractBase, tasks
from executors.testing._support import wait_for_file

ExecutorFactory = Callable[..., Any]


@pytest.fixture
def executor_factory() -> ExecutorFactory:
    return backend_factory("queue")


# -- task factories (closures travel by value) ------------------------------


def exit_on(bad: int, code: int = 3) -> Callable[[int], int]:
    def fn(x: int) -> int:
        if x == bad:
            os._exit(code)
        return x

    return fn


def sleep_on(bad: int, seconds: float, pidfile: str = "") -> Callable[[int], int]:
    def fn(x: int) -> int:
        if x == bad:
            if pidfile:
                with open(pidfile + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(pidfile + ".tmp", pidfile)
            time.sleep(seconds)
        return x

    return fn


def log_then_sleep(path: str, seconds: float, bad: int) -> Callable[[int], int]:
    """Append the item to ``path`` (one line per run); item ``bad`` exits."""

    def fn(x: int) -> int:
        with open(path, "a") as f:
            f.write(f"{x}\n")
        if x == bad:
            os._exit(3)
        time.sleep(seconds)
        return x

    return fn


def log_then(log: str, then: str) -> Callable[[], str]:
    """Append a line to ``log`` (one per attempt), then ``then``:

    ``"hang"`` sleeps 30 s, ``"die"`` exits the worker, ``"hang-first"``
    sleeps 30 s on the first attempt only and returns ``"ok"`` after.
    """

    def fn() -> str:
        with open(log, "a") as f:
            f.write("attempt\n")
        with open(log) as f:
            first = f.read().count("attempt") == 1
        if then == "die":
            os._exit(5)
        if then == "hang" or first:
            time.sleep(30)
        return "ok"

    return fn


def attempts_in(log: Path) -> int:
    return log.read_text().count("attempt") if log.exists() else 0


def ignore_sigterm_then_sleep(pidfile: str, seconds: float) -> Callable[[], None]:
    def fn() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pidfile + ".tmp", pidfile)
        time.sleep(seconds)

    return fn


def pid_after(seconds: float) -> Callable[[Any], int]:
    def fn(_: Any) -> int:
        time.sleep(seconds)
        return os.getpid()

    return fn


def worker_pids(executor: Any) -> set[int]:
    with executor._pool.lock:
        return {w.process.pid for w in executor._pool.workers.values()}


def one_warm_worker(make_executor: ExecutorFactory) -> Any:
    """A one-worker executor that has run 20 short tasks: its pool now sends
    a task to the worker before the one it runs is answered."""
    executor = make_executor(max_workers=1)
    for _ in range(20):
        executor.submit(tasks.noop).result(timeout=BOUND)
    return executor


def submit_two_sent_ahead(
    executor: Any, first: tuple[Any, ...], second: tuple[Any, ...]
) -> tuple[Future[Any], Future[Any]]:
    """Submit ``first`` and ``second`` (a function and its arguments) to
    :func:`one_warm_worker`'s executor; check that its worker holds both,
    the second sent ahead. Their futures."""
    running = executor.submit(*first)
    ahead = executor.submit(*second)
    with executor._pool.lock:
        (worker,) = executor._pool.workers.values()
        held = [item.call.future for item in worker.held]
    assert held == [running, ahead], "the second task was not sent ahead"
    return running, ahead


def submit_to_wait_out_a_retry_delay(executor: Any, log: Path) -> Future[Any]:
    """Submit a task that fails at once and is retried after 30 s; its future
    once the retry waits. Each attempt is a line in ``log``."""
    fn = with_options(
        tasks.count_and_fail, retries=3, retry_on=tasks.Flaky, retry_delay=30
    )
    fut = executor.submit(fn, str(log))
    wait_until(lambda: bool(executor._calls._waiting), "the retry delay")
    return fut


class QueueBase(ContractBase):
    @pytest.fixture
    def executor(self, make_executor: ExecutorFactory) -> Any:
        executor = make_executor()
        # Start both workers, so that tests inject faults into a warm pool.
        # (A loaded machine may start the second one after the first has
        # run both tasks: try again.)
        deadline = time.monotonic() + BOUND
        while len(set(executor.map(tasks.sleep_then_pid, [0.3] * 2))) < 2:
            assert time.monotonic() < deadline, "the second worker never started"
        return executor


# -- options ----------------------------------------------------------------


class TestOptions:
    @pytest.mark.parametrize("value", [0, -1.0])
    def test_task_timeout_must_be_positive(self, value: float) -> None:
        with pytest.raises(ValueError, match="task_timeout"):
            QueueExecutor(task_timeout=value)

    @pytest.mark.parametrize("value", ["1", True, [1]])
    def test_task_timeout_must_be_a_number(self, value: Any) -> None:
        with pytest.raises(TypeError, match="task_timeout"):
            QueueExecutor(task_timeout=value)

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_with_timeout_validates(self) -> None:
        with pytest.raises(ValueError, match="with_timeout"):
            with_timeout(tasks.identity, 0)
        with pytest.raises(TypeError, match="with_timeout"):
            with_timeout(tasks.identity, "2")
        with pytest.raises(TypeError, match="callable"):
            with_timeout(42, 1.0)  # type: ignore[arg-type]

    def test_with_timeout_is_a_deprecated_with_options(self) -> None:
        with pytest.deprecated_call(match="with_options"):
            limited = with_timeout(tasks.add, 1.0)
        assert isinstance(limited, TimeLimited)
        assert isinstance(limited, WithOptions)
        assert limited.seconds == limited.options.timeout == 1.0
        assert limited(2, b=3) == 5
        assert pickle.loads(pickle.dumps(limited))(1, 1) == 2
        combined = with_options(limited, retries=2)
        assert (combined.options.timeout, combined.options.retries) == (1.0, 2)

    def test_declares_its_capabilities(self) -> None:
        caps = QueueExecutor.capabilities
        assert caps.survives_worker_death
        assert caps.task_control
        assert caps.stops_timed_out_tasks
        assert caps.kills_single_task
        assert caps.terminates_workers
        assert QueueExecutor.backend == "queue"


# -- crashes: only the victim fails --------------------------------------------


class TestVictimOnly(QueueBase):
    @pytest.mark.parametrize(
        ("fn", "args", "exitcode"),
        [
            (tasks.exit_abruptly, (3,), 3),
            (tasks.kill_self, (signal.SIGKILL,), -signal.SIGKILL),
            (tasks.segfault, (), -signal.SIGSEGV),
        ],
        ids=["os._exit", "SIGKILL", "segfault"],
    )
    def test_only_the_crashing_task_fails(
        self, executor: Any, fn: Any, args: tuple[Any, ...], exitcode: int
    ) -> None:
        running = [executor.submit(tasks.sleep_and_return, 0.3, i) for i in range(2)]
        crash = executor.submit(fn, *args)
        queued = [executor.submit(tasks.identity, i) for i in range(20)]
        exc = crash.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == exitcode
        assert str(exitcode) in str(exc)
        assert [f.result(timeout=BOUND) for f in running] == [0, 1]
        assert [f.result(timeout=BOUND) for f in queued] == list(range(20))
        assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4

    def test_sigkill_from_outside_fails_only_that_task(
        self, executor: Any, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pid"
        victim = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 30, "x")
        other = executor.submit(tasks.sleep_and_return, 0.5, "other")
        queued = [executor.submit(tasks.identity, i) for i in range(10)]
        pid = int(wait_for_file(pidfile))
        os.kill(pid, signal.SIGKILL)
        exc = victim.exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(exc)
        assert other.result(timeout=BOUND) == "other"
        assert [f.result(timeout=BOUND) for f in queued] == list(range(10))

    def test_the_dead_worker_is_replaced(self, executor: Any) -> None:
        before = worker_pids(executor)
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.exit_abruptly, 3).result(timeout=BOUND)
        wait_until(lambda: len(worker_pids(executor)) == 2, "a replacement")
        after = worker_pids(executor)
        assert len(after - before) == 1
        pids = set(executor.map(tasks.sleep_then_pid, [0.2] * 4, timeout=BOUND))
        assert pids <= after

    def test_tasks_sent_ahead_to_a_dying_worker_run_elsewhere(
        self, make_executor: ExecutorFactory
    ) -> None:
        # One worker and short tasks: the pool sends a second task before
        # the first is answered. The first kills the worker; the second,
        # received but never started, must run in the replacement.
        executor = one_warm_worker(make_executor)
        (first_pid,) = worker_pids(executor)
        crash, ahead = submit_two_sent_ahead(
            executor, (tasks.busy_then_exit, 0.3, 5), (tasks.get_pid,)
        )
        with pytest.raises(WorkerCrashedError, match="exit code 5"):
            crash.result(timeout=BOUND)
        pid = ahead.result(timeout=BOUND)
        assert pid != first_pid

    def test_each_victim_gets_its_own_exception(self, executor: Any) -> None:
        crashes = [executor.submit(tasks.exit_abruptly, 3) for _ in range(3)]
        errors = [f.exception(timeout=BOUND) for f in crashes]
        assert all(isinstance(e, WorkerCrashedError) for e in errors)
        assert len({id(e) for e in errors}) == 3


# -- chunks of map: only the running item fails -------------------------------


class TestChunkCrash(QueueBase):
    def _collect(self, results: Iterator[Any]) -> tuple[list[Any], BaseException]:
        got: list[Any] = []
        with pytest.raises(WorkerCrashedError) as info:
            for value in results:
                got.append(value)
        return got, info.value

    def test_slow_items_before_the_crash_come_back(self, executor: Any) -> None:
        results = executor.map(sleep_on(-1, 0), range(10), chunksize=10, timeout=BOUND)
        assert list(results) == list(range(10))
        got, _ = self._collect(
            executor.map(exit_on(6), range(10), chunksize=10, timeout=BOUND)
        )
        assert got == list(range(6))
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_fast_items_crash_is_pinned_to_its_item(self, executor: Any) -> None:
        # Tiny items run many per piece; the pool reruns the piece one item
        # at a time to find the one that crashes.
        got, exc = self._collect(
            executor.map(exit_on(321), range(1000), chunksize=1000, timeout=BOUND)
        )
        assert got == list(range(321))
        assert "this item of a map" in str(exc)

    def test_items_already_reported_are_not_run_again(
        self, executor: Any, tmp_path: Path
    ) -> None:
        # Items slower than the flush interval are reported one by one, so
        # a crash late in the chunk repeats none of them.
        log = tmp_path / "log"
        got, _ = self._collect(
            executor.map(
                log_then_sleep(str(log), 0.05, bad=5),
                range(8),
                chunksize=8,
                timeout=BOUND,
            )
        )
        assert got == [0, 1, 2, 3, 4]
        runs = log.read_text().split()
        assert sorted(runs) == ["0", "1", "2", "3", "4", "5"]

    def test_sigkill_from_outside_mid_chunk_fails_one_item(
        self, executor: Any, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pid"
        results = executor.map(
            sleep_on(3, 30, str(pidfile)), range(8), chunksize=8, timeout=BOUND
        )
        pid = int(wait_for_file(pidfile))
        os.kill(pid, signal.SIGKILL)
        got, exc = self._collect(results)
        assert got == [0, 1, 2]
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == -signal.SIGKILL

    def test_other_maps_are_unaffected(self, executor: Any) -> None:
        healthy = executor.map(
            sleep_on(-1, 0), range(3000), chunksize=100, timeout=BOUND
        )
        got, _ = self._collect(
            executor.map(exit_on(57), range(200), chunksize=20, timeout=BOUND)
        )
        assert got == list(range(57))
        assert list(healthy) == list(range(3000))

    def test_unpicklable_item_fails_at_its_position(self, executor: Any) -> None:
        items: list[Any] = [1, 2, threading.Lock(), 4]
        got: list[Any] = []
        with pytest.raises(TypeError):
            for value in executor.map(tasks.identity, items, chunksize=4):
                got.append(value)
        assert got == [1, 2]
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# -- timeouts and kill_task ---------------------------------------------------


class TestTimeouts(ContractBase):
    def test_task_timeout_stops_only_the_slow_task(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(task_timeout=0.5)
        slow = executor.submit(tasks.sleep_and_return, 30, "never")
        quick = [executor.submit(tasks.sleep_and_return, 0.1, i) for i in range(6)]
        start = time.monotonic()
        exc = slow.exception(timeout=BOUND)
        assert type(exc) is TaskTimeoutError
        assert isinstance(exc, TimeoutError)
        assert exc.timeout == 0.5
        # The call queue's words, as on every backend.
        assert str(exc) == (
            "the task ran longer than its timeout of 0.5 s; it was stopped "
            "and its worker replaced"
        )
        assert time.monotonic() - start < BOUND
        assert [f.result(timeout=BOUND) for f in quick] == list(range(6))
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_with_options_per_call(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        limited = executor.submit(with_options(tasks.sleep_and_return, timeout=0.3), 30)
        unlimited = executor.submit(tasks.sleep_and_return, 1.0, "ok")
        assert type(limited.exception(timeout=BOUND)) is TaskTimeoutError
        assert unlimited.result(timeout=BOUND) == "ok"

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_with_timeout_still_limits_one_call(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor()
        limited = executor.submit(with_timeout(tasks.sleep_and_return, 0.3), 30)
        exc = limited.exception(timeout=BOUND)
        assert type(exc) is TaskTimeoutError
        assert exc.timeout == 0.3

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    @pytest.mark.parametrize("wrap", ["with_options", "with_timeout"])
    def test_a_per_call_timeout_overrides_task_timeout(
        self, make_executor: ExecutorFactory, wrap: str
    ) -> None:
        executor = make_executor(task_timeout=0.2)
        fn = (
            with_options(tasks.sleep_and_return, timeout=5.0)
            if wrap == "with_options"
            else with_timeout(tasks.sleep_and_return, 5.0)
        )
        fut = executor.submit(fn, 0.6, "ok")
        assert fut.result(timeout=BOUND) == "ok"

    def test_the_constructor_task_timeout(self) -> None:
        # Direct construction, without create(): the constructor's own option.
        with QueueExecutor(max_workers=1, task_timeout=0.3) as executor:
            slow = executor.submit(tasks.sleep_and_return, 30)
            exc = slow.exception(timeout=BOUND)
            assert type(exc) is TaskTimeoutError
            assert exc.timeout == 0.3
            assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_timeout_per_item_in_a_map(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        fn = with_options(sleep_on(4, 30), timeout=0.5)
        results = executor.map(fn, range(8), chunksize=8, timeout=BOUND)
        got: list[int] = []
        with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
            for value in results:
                got.append(value)
        assert got == [0, 1, 2, 3]

    def test_queued_time_does_not_count(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(max_workers=1, task_timeout=1.0)
        first = executor.submit(tasks.sleep_and_return, 0.6, "a")
        second = executor.submit(tasks.sleep_and_return, 0.6, "b")
        assert first.result(timeout=BOUND) == "a"
        assert second.result(timeout=BOUND) == "b"


class TestKillTask(QueueBase):
    def test_kill_a_running_task(self, executor: Any, tmp_path: Path) -> None:
        pidfile = tmp_path / "pid"
        fut = executor.submit(tasks.write_pid_then_sleep, str(pidfile), 30, "x")
        others = [executor.submit(tasks.sleep_and_return, 0.2, i) for i in range(4)]
        pid = int(wait_for_file(pidfile))
        assert not fut.cancel(), "cancel() must keep its stdlib meaning"
        assert executor.kill_task(fut)
        exc = fut.exception(timeout=BOUND)
        assert isinstance(exc, TaskKilledError)
        assert isinstance(exc, CancelledError)
        assert "kill_task() on the 'queue' executor" in str(exc)
        assert not fut.cancelled()
        wait_until(lambda: not psutil.pid_exists(pid), "the worker to die")
        assert [f.result(timeout=BOUND) for f in others] == [0, 1, 2, 3]
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_kill_a_task_sent_ahead_fails_it_at_once(
        self, make_executor: ExecutorFactory
    ) -> None:
        # The task sent ahead to a busy worker has not started: its future
        # fails now (kill_task's common meaning), the task it waits behind
        # finishes, and the worker is killed only as the stopped task starts.
        executor = one_warm_worker(make_executor)
        running, ahead = submit_two_sent_ahead(
            executor, (tasks.sleep_and_return, 1.0, "done"), (tasks.identity, "never")
        )
        assert executor.kill_task(ahead)
        assert type(ahead.exception(timeout=BOUND)) is TaskKilledError
        assert not running.done()
        assert running.result(timeout=BOUND) == "done"
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2

    def test_kill_a_queued_task_returns_false(self, executor: Any) -> None:
        # kill_task() means the same on every backend: it stops a running
        # task; a queued one is left alone (cancel() is the way to drop it).
        blockers = [executor.submit(tasks.sleep_and_return, 0.5) for _ in range(2)]
        queued = [executor.submit(tasks.identity, i) for i in range(6)]
        assert not executor.kill_task(queued[-1])
        assert not queued[-1].done()
        assert queued[-1].result(timeout=BOUND) == 5
        for fut in blockers + queued[:-1]:
            fut.exception(timeout=BOUND)

    def test_kill_a_finished_task_returns_false(self, executor: Any) -> None:
        fut = executor.submit(tasks.add, 1, 1)
        assert fut.result(timeout=BOUND) == 2
        assert not executor.kill_task(fut)
        assert not executor.kill_task(Future())


# -- task control: retries and terminate_workers on the pool ---------------------


class TestRetries(ContractBase):
    def test_a_timeout_is_retried_when_listed(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        log = tmp_path / "log"
        fn = with_options(
            log_then(str(log), "hang-first"),
            timeout=0.5,
            retries=1,
            retry_on=TimeoutError,
        )
        assert make_executor().submit(fn).result(timeout=BOUND) == "ok"
        assert attempts_in(log) == 2

    def test_a_timeout_is_not_retried_unless_listed(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        # retries alone cover a dead worker; the pool killing a worker at a
        # timeout is not one.
        log = tmp_path / "log"
        fn = with_options(log_then(str(log), "hang"), timeout=0.3, retries=2)
        exc = make_executor().submit(fn).exception(timeout=BOUND)
        assert type(exc) is TaskTimeoutError
        assert attempts_in(log) == 1

    def test_a_worker_that_always_dies_fails_after_every_attempt(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        log = tmp_path / "log"
        fn = with_options(log_then(str(log), "die"), retries=2)
        exc = make_executor().submit(fn).exception(timeout=BOUND)
        assert isinstance(exc, WorkerCrashedError)
        assert exc.exitcode == 5
        assert getattr(exc, "attempts", None) == 3
        assert attempts_in(log) == 3

    def test_create_retries_apply_to_every_task(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor(retries=1)
        futures_ = [
            executor.submit(tasks.die_first, str(tmp_path / f"once{i}"), i)
            for i in range(4)
        ]
        assert [f.result(timeout=BOUND) for f in futures_] == [0, 1, 2, 3]

    def test_map_retries_each_item_whose_worker_died(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        fn = with_options(tasks.die_first, retries=1)
        paths = [str(tmp_path / f"item{i}") for i in range(4)]
        got = list(make_executor().map(fn, paths, range(4), timeout=BOUND))
        assert got == [0, 1, 2, 3]

    def test_kill_task_is_never_retried(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        fn = with_options(
            tasks.sleep_and_return, retries=3, retry_on=(CancelledError, TimeoutError)
        )
        fut = executor.submit(fn, 30)
        wait_until(fut.running, "the task to run")
        assert executor.kill_task(fut)
        assert type(fut.exception(timeout=BOUND)) is TaskKilledError

    def test_kill_task_while_a_retry_waits(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor()
        log = tmp_path / "log"
        fut = submit_to_wait_out_a_retry_delay(executor, log)
        assert executor.kill_task(fut)
        assert type(fut.exception(timeout=BOUND)) is TaskKilledError
        assert attempts_in(log) == 1
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


class TestTerminateWorkers(ContractBase):
    @pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
    def test_a_task_waiting_out_its_retry_delay_fails(
        self, make_executor: ExecutorFactory, tmp_path: Path, how: str
    ) -> None:
        executor = make_executor()
        log = tmp_path / "log"
        fut = submit_to_wait_out_a_retry_delay(executor, log)
        getattr(executor, how)()
        exc = fut.exception(timeout=1.0)
        assert type(exc) is WorkersTerminatedError
        assert f"{how}()" in str(exc)
        assert attempts_in(log) == 1

    @pytest.mark.slow
    @pytest.mark.timeout(60)
    def test_a_worker_ignoring_sigterm_is_killed_after_a_grace(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        executor = make_executor(max_workers=1)
        pidfile = tmp_path / "pid"
        running = executor.submit(ignore_sigterm_then_sleep(str(pidfile), 60))
        queued = executor.submit(tasks.add, 1, 1)
        pid = int(wait_for_file(pidfile))
        start = time.monotonic()
        executor.terminate_workers()
        # The grace shutdown() gives a worker (STOP_GRACE_SECONDS), not 60 s.
        assert time.monotonic() - start < BOUND / 2
        assert type(running.exception(timeout=0)) is WorkersTerminatedError
        # Queued work is cancelled; one task may have been sent ahead to the
        # busy worker (before any task finished), and fails with it.
        assert queued.cancelled() or type(queued.exception(timeout=0)) is (
            WorkersTerminatedError
        )
        assert not psutil.pid_exists(pid)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(tasks.add, 1, 1)

    def test_before_any_worker_started(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        executor.kill_workers()
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(tasks.add, 1, 1)


# -- initializer and max_tasks_per_child ---------------------------------------


def _count_init(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")


class TestLifecycle(ContractBase):
    def test_failing_initializer_breaks_without_a_restart_loop(
        self, make_executor: ExecutorFactory, tmp_path: Path
    ) -> None:
        log = tmp_path / "starts"

        def init() -> None:
            with open(log, "a") as f:
                f.write("x")
            raise RuntimeError("no")

        executor = make_executor(initializer=init)
        futs = [executor.submit(tasks.identity, i) for i in range(5)]
        for fut in futs:
            exc = fut.exception(timeout=BOUND)
            assert isinstance(exc, InitializerFailedError)
            assert "RuntimeError: no" in str(exc)
        assert len({id(f.exception()) for f in futs}) == 5
        with pytest.raises(InitializerFailedError):
            executor.submit(tasks.identity, 1)
        time.sleep(0.5)
        assert len(log.read_text()) <= executor.max_workers

    def test_initializer_that_kills_its_worker(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.exiting_init)
        exc = executor.submit(tasks.identity, 1).exception(timeout=BOUND)
        assert isinstance(exc, InitializerFailedError)
        assert "exit code 7" in str(exc)

    def test_lambda_initializer(self, make_executor: ExecutorFactory) -> None:
        executor = make_executor(
            initializer=lambda v: tasks.record_init(v),  # noqa: PLW0108
            initargs=("set",),
        )
        assert executor.submit(tasks.read_init).result(timeout=BOUND) == "set"

    @pytest.mark.parametrize("per_child", [1, 2])
    def test_max_tasks_per_child_with_a_backlog(
        self, make_executor: ExecutorFactory, per_child: int
    ) -> None:
        # CPython gh-115634: ProcessPoolExecutor can deadlock when workers
        # retire while a backlog waits. Every task must complete.
        executor = make_executor(max_tasks_per_child=per_child)
        # A closure, not a function of executors.testing: each of the many
        # new workers would import pytest and hypothesis to unpickle that.
        fn = pid_after(0.01)
        futs = [executor.submit(fn, i) for i in range(12)]
        pids = [f.result(timeout=BOUND) for f in futs]
        counts = {pid: pids.count(pid) for pid in pids}
        assert max(counts.values()) <= per_child
        assert len(counts) >= 12 // per_child
        results = executor.map(sleep_on(-1, 0), range(300), timeout=BOUND)
        assert list(results) == list(range(300))


# -- pickling ------------------------------------------------------------------


class TestPickling(QueueBase):
    def test_unpicklable_argument_fails_its_future_only(self, executor: Any) -> None:
        futs = [executor.submit(tasks.identity, threading.Lock()) for _ in range(3)]
        errors = [f.exception(timeout=BOUND) for f in futs]
        assert all(isinstance(e, TypeError) for e in errors)
        assert len({id(e) for e in errors}) == 3
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_unpicklable_result_fails_with_the_pickling_error(
        self, executor: Any
    ) -> None:
        exc = executor.submit(tasks.return_lock).exception(timeout=BOUND)
        assert isinstance(exc, TypeError)
        assert "lock" in str(exc)
        exc2 = executor.submit(tasks.return_lock).exception(timeout=BOUND)
        assert exc2 is not exc
        assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3

    def test_unpicklable_value_in_a_chunk_ends_it_there(self, executor: Any) -> None:
        def fn(x: int) -> Any:
            return threading.Lock() if x == 3 else x

        got: list[Any] = []
        with pytest.raises(TypeError):
            for value in executor.map(fn, range(6), chunksize=6, timeout=BOUND):
                got.append(value)
        assert got == [0, 1, 2]

    def test_large_numpy_arrays_round_trip_writable(self, executor: Any) -> None:
        np = pytest.importorskip("numpy")
        arrays = [np.arange(i, i + 700_000, dtype=np.float64) for i in range(3)]
        back = list(executor.map(tasks.identity, arrays, timeout=BOUND))
        for a, b in zip(arrays, back):
            assert np.array_equal(a, b)
            assert b.flags.writeable
        big = executor.submit(tasks.big_payload, 3_000_000).result(timeout=BOUND)
        assert big == b"x" * 3_000_000


# -- start methods ------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="fork is safe to test on Linux")
class TestFork(QueueBase):
    @pytest.fixture
    def executor(self, make_executor: ExecutorFactory) -> Any:
        return make_executor(mp_context="fork")

    def test_fork_workers_survive_crashes(self, executor: Any) -> None:
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        with pytest.raises(WorkerCrashedError):
            executor.submit(tasks.exit_abruptly, 3).result(timeout=BOUND)
        assert list(executor.map(tasks.identity, range(50), timeout=BOUND)) == list(
            range(50)
        )


# -- exit paths and orphans -----------------------------------------------------


def _run(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        # Exited (and was reaped) between two looks: what the test waits for.
        return False


def _assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + BOUND
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _is_alive(p)]
        time.sleep(0.05)
    assert not alive, f"worker processes left behind: {alive}"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="fork is safe to test on Linux")
def test_fork_recycling_closes_only_the_siblings_pipes(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Every task retires its worker, so spares are forked while retired
    # workers' pipes are being closed. A child that closed a descriptor
    # number freed and taken again meanwhile lost its log socket (EBADF at
    # exit) or its fork's sentinel pipe (a live worker taken for dead, its
    # task failed with "exit code 0").
    with executors.create(
        "queue", max_workers=2, mp_context="fork", max_tasks_per_child=1
    ) as ex:
        futures = [ex.submit(tasks.sleep_then_pid, 0.002) for _ in range(300)]
        failures = [future.exception(timeout=60) for future in futures]
    assert [f for f in failures if f is not None] == []
    assert "Bad file descriptor" not in capfd.readouterr().err


EXIT_PROGRAM = """
import os, sys, time
import executors
from executors.testing import tasks

def main():
    ex = executors.create("queue", max_workers=2, mp_context=sys.argv[2])
    list(ex.map(tasks.sleep_then_pid, [0.2, 0.2]))
    print(*[w.process.pid for w in ex._pool.workers.values()], flush=True)
    for i in range(6):
        ex.submit(tasks.touch_after, os.path.join(sys.argv[1], f"t{i}"), 0.2)
    if sys.argv[3] == "nowait":
        ex.shutdown(wait=False)
    elif sys.argv[3] == "dropped":
        del ex

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["no-shutdown", "nowait", "dropped"])
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_exit_completes_pending_work(tmp_path: Path, how: str, method: str) -> None:
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} here")
    done = tmp_path / "done"
    done.mkdir()
    proc = _run(EXIT_PROGRAM, tmp_path, str(done), method, how)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert sorted(p.name for p in done.iterdir()) == [f"t{i}" for i in range(6)]
    _assert_gone([int(p) for p in proc.stdout.split()])


ORPHAN_PROGRAM = """
import sys, time
import executors
from executors.testing import tasks

if __name__ == "__main__":
    ex = executors.create("queue", max_workers=2, mp_context=sys.argv[1])
    list(ex.map(tasks.sleep_then_pid, [0.2, 0.2]))
    print(*[w.process.pid for w in ex._pool.workers.values()], flush=True)
    futs = [ex.submit(tasks.sleep_and_return, float(sys.argv[2])) for _ in range(4)]
    print("READY", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.parametrize("busy", [0.0, 3.0], ids=["idle", "busy"])
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_no_orphans_when_the_parent_is_killed(
    tmp_path: Path, method: str, busy: float
) -> None:
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} here")
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(ORPHAN_PROGRAM))
    proc = subprocess.Popen(
        [sys.executable, str(path), method, str(busy)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert proc.stdout.readline().strip() == "READY"
        proc.kill()
        proc.wait(BOUND)
        # An idle worker sees end-of-file at once; a busy one after its task.
        _assert_gone(pids)
    finally:
        proc.kill()
        proc.wait(BOUND)


class TestExecutorLifetime(ContractBase):
    def test_dropped_executor_stops_its_workers(self) -> None:
        # Not make_executor: it keeps a reference to shut the executor down.
        executor = QueueExecutor(max_workers=2)
        list(executor.map(tasks.sleep_then_pid, [0.2, 0.2], timeout=BOUND))
        pids = worker_pids(executor)
        manager = executor._pool.manager
        del executor
        gc.collect()
        manager.join(BOUND)
        assert not manager.is_alive()
        _assert_gone(sorted(pids))

    def test_shutdown_wait_from_a_done_callback(
        self, make_executor: ExecutorFactory
    ) -> None:
        # Callbacks run on the callback thread, not in the manager thread:
        # shutdown(wait=True) there really waits for the manager to end.
        executor = make_executor()
        done = threading.Event()
        manager_alive: list[bool] = []

        def callback(_: Future[Any]) -> None:
            executor.shutdown(wait=True)
            manager_alive.append(executor._pool.manager.is_alive())
            done.set()

        executor.submit(tasks.add, 1, 1).add_done_callback(callback)
        assert done.wait(BOUND)
        assert manager_alive == [False]

    def test_task_killed_error_is_the_package_one(self) -> None:
        # One class, wherever it is imported from.
        assert TaskKilledError is executors.TaskKilledError
        assert issubclass(TaskKilledError, CancelledError)


class TestCallbackThread(QueueBase):
    """A user's callback that blocks holds up no result of the pool."""

    def test_results_flow_while_a_callback_blocks(
        self, executor: Any, tmp_path: Path
    ) -> None:
        release = threading.Event()
        names: list[str] = []

        def block(_: Future[Any]) -> None:
            names.append(threading.current_thread().name)
            release.wait(BOUND)

        try:
            executor.submit(tasks.add, 1, 1).add_done_callback(block)
            wait_until(lambda: bool(names), "the callback to start")
            assert names != ["executors-queue-manager"]
            # Plain tasks; the head of a map before an unpicklable item; the
            # rest of a chunk rerun after a crash: all complete through the
            # pool's own callbacks, none waits behind the blocked one.
            assert executor.submit(tasks.add, 2, 2).result(timeout=BOUND) == 4
            items: list[Any] = [1, 2, threading.Lock(), 4]
            got: list[Any] = []
            with pytest.raises(TypeError):
                for value in executor.map(
                    tasks.identity, items, chunksize=4, timeout=BOUND
                ):
                    got.append(value)
            assert got == [1, 2]
            got = []
            with pytest.raises(WorkerCrashedError):
                for value in executor.map(
                    exit_on(321), range(1000), chunksize=1000, timeout=BOUND
                ):
                    got.append(value)
            assert got == list(range(321))
        finally:
            release.set()

    def test_broken_executor_error_is_fresh(
        self, make_executor: ExecutorFactory
    ) -> None:
        executor = make_executor(initializer=tasks.failing_init)
        with pytest.raises(BrokenExecutor):
            executor.submit(tasks.identity, 1).result(timeout=BOUND)
        errors = []
        for _ in range(2):
            with pytest.raises(InitializerFailedError) as info:
                executor.submit(tasks.identity, 1)
            errors.append(info.value)
        assert errors[0] is not errors[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_stopping_workers_right_after_a_crash_returns(how: str) -> None:
    # The crashed worker's replacement is still starting when the workers
    # are stopped: it comes too late to register, and the manager must
    # still be woken to see that nothing is starting any more.
    ex = executors.create("queue", max_workers=2)
    try:
        crashed = ex.submit(tasks.exit_abruptly, 3)
        assert isinstance(
            crashed.exception(timeout=BOUND), executors.WorkerCrashedError
        )
        start = time.monotonic()
        getattr(ex, how)()
        assert time.monotonic() - start < 10
    finally:
        ex.shutdown(wait=False)


@pytest.mark.slow
def test_no_work_is_sent_ahead_to_a_worker_whose_task_already_runs_long() -> None:
    # Tasks so far were tiny, so send-ahead would allow several behind any
    # busy worker; but one that has run a long task for a while keeps its
    # pipe empty, and tiny tasks submitted now all finish on the other.
    import time as _time

    with executors.create("queue", max_workers=2) as ex:
        assert list(ex.map(tasks.identity, range(50))) == list(range(50))
        held = ex.submit(tasks.sleep_and_return, 3.0, "held")
        _time.sleep(0.3)
        quick = [ex.submit(tasks.identity, i) for i in range(8)]
        for i, future in enumerate(quick):
            assert future.result(timeout=2.5) == i
        assert not held.done()
        assert held.result(timeout=30) == "held"
