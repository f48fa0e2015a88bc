"""What is specific to the process, thread and inline backends."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

import pytest

import executors
from executors import _options
from executors.testing import BOUND, tasks


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
def test_process_max_tasks_per_child_replaces_workers() -> None:
    with executors.create("process", max_workers=1, max_tasks_per_child=1) as ex:
        pids = {ex.submit(tasks.get_pid).result(timeout=BOUND) for _ in range(3)}
    assert len(pids) == 3


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="only rejected before 3.11")
def test_process_max_tasks_per_child_rejected_before_311() -> None:
    with pytest.raises(ValueError, match="3.11"):
        executors.create("process", max_tasks_per_child=1)


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_process_start_method_by_name(method: str) -> None:
    with executors.create("process", max_workers=1, mp_context=method) as ex:
        assert ex._pool._mp_context.get_start_method() == method
        assert ex.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


def test_process_defaults_to_the_safe_start_method() -> None:
    with executors.create("process", max_workers=1) as ex:
        assert ex._pool._mp_context.get_start_method() == _options.DEFAULT_START_METHOD
    assert _options.DEFAULT_START_METHOD in ("forkserver", "spawn")


def test_process_breaks_like_the_stdlib() -> None:
    # The stdlib's class (WorkerCrashedError is a BrokenProcessPool), with
    # the exit code the stdlib leaves out.
    with executors.create("process", max_workers=2) as ex:
        with pytest.raises(BrokenProcessPool, match="exit code 3") as crash:
            ex.submit(tasks.exit_abruptly, 3).result(timeout=BOUND)
        assert isinstance(crash.value, executors.WorkerCrashedError)
        assert crash.value.exitcode == 3
        with pytest.raises(BrokenProcessPool, match="no new task can be submitted"):
            ex.submit(tasks.identity, 1)


def test_process_sends_main_module_lambdas_with_cloudpickle() -> None:
    with executors.create("process", max_workers=1) as ex:
        assert ex.submit(lambda: "ok").result(timeout=BOUND) == "ok"


def test_process_without_cloudpickle_rejects_lambdas() -> None:
    import pickle

    with executors.create("process", max_workers=1, cloudpickle=False) as ex:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            ex.submit(lambda: "ok").result(timeout=BOUND)
        assert ex.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2


def test_thread_name_prefix_and_broken_initializer() -> None:
    with executors.create("thread", max_workers=1, thread_name_prefix="mine") as ex:
        assert (
            ex.submit(tasks.current_thread_name)
            .result(timeout=BOUND)
            .startswith("mine")
        )
    with executors.create(
        "thread", max_workers=1, initializer=tasks.failing_init
    ) as ex:
        with pytest.raises(BrokenThreadPool):
            ex.submit(tasks.identity, 1).result(timeout=BOUND)


def _pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix + "_")]


def test_thread_starts_threads_as_work_arrives_and_ends_them_at_shutdown() -> None:
    # As the stdlib pool: none before the first task, named <prefix>_<n>, at
    # most max_workers, all gone once shutdown(wait=True) returns.
    ex = executors.create("thread", max_workers=2, thread_name_prefix="lazy")
    assert _pool_threads("lazy") == []
    assert ex.submit(tasks.identity, 1).result(timeout=BOUND) == 1
    assert [t.name for t in _pool_threads("lazy")] == ["lazy_0"]
    list(ex.map(tasks.sleep_and_return, [0.05] * 6, chunksize=1))
    assert sorted(t.name for t in _pool_threads("lazy")) == ["lazy_0", "lazy_1"]
    ex.shutdown(wait=True)
    assert _pool_threads("lazy") == []


def test_thread_task_waiting_on_a_task_of_the_same_pool_gets_a_thread() -> None:
    # The second thread starts because the first is busy, not because of
    # how many tasks ran before.
    with executors.create("thread", max_workers=2) as ex:
        for _ in range(5):
            ex.submit(tasks.identity, 0).result(timeout=BOUND)

        def outer() -> int:
            return ex.submit(tasks.identity, 7).result(timeout=BOUND) + 1

        assert ex.submit(outer).result(timeout=BOUND) == 8


def test_thread_dropped_without_shutdown_finishes_its_work_and_ends() -> None:
    import gc

    ex = executors.create("thread", max_workers=2, thread_name_prefix="dropped")
    futures = [ex.submit(tasks.sleep_and_return, 0.05, 1) for _ in range(4)]
    del ex
    gc.collect()
    assert [f.result(timeout=BOUND) for f in futures] == [1] * 4
    for thread in _pool_threads("dropped"):
        thread.join(timeout=BOUND)
    assert _pool_threads("dropped") == []


def test_thread_task_that_shuts_its_pool_down_and_waits_gets_an_error() -> None:
    # It would wait for its own end: the stdlib raises, and so do we, rather
    # than hang. The shutdown itself stands.
    ex = executors.create("thread", max_workers=2, thread_name_prefix="selfstop")

    def stop_own_pool() -> str:
        with pytest.raises(RuntimeError, match="would wait for itself"):
            ex.shutdown(wait=True)
        return "raised"

    assert ex.submit(stop_own_pool).result(timeout=BOUND) == "raised"
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.identity, 1)
    ex.shutdown(wait=True)
    assert _pool_threads("selfstop") == []


def test_inline_runs_in_the_caller_and_initializer_once() -> None:
    calls = []
    with executors.create("inline", initializer=calls.append, initargs=("init",)) as ex:
        fut = ex.submit(tasks.current_thread_name)
        assert fut.done()
        assert fut.result() == threading.current_thread().name
    assert calls == ["init"]


def test_inline_failing_initializer_breaks_it() -> None:
    ex = executors.create("inline", initializer=tasks.failing_init)
    with pytest.raises(
        executors.InitializerFailedError, match="initializer failed on purpose"
    ):
        ex.submit(tasks.identity, 1)
    ex.shutdown()


def test_inline_lazy_map_runs_as_it_is_consumed() -> None:
    seen: list[int] = []

    def record(x: int) -> int:
        seen.append(x)
        return x

    with executors.create("inline") as ex:
        results = ex.map(record, range(100), buffersize=3)
        assert len(seen) <= 3
        assert next(results) == 0
        results.close()
    assert len(seen) <= 4


def test_inline_keyboard_interrupt_reaches_the_caller() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    with executors.create("inline") as ex, pytest.raises(KeyboardInterrupt):
        ex.submit(interrupt)


def test_a_callable_that_cannot_be_sent_names_itself() -> None:
    import pickle

    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.locked()

    with executors.create("process", max_workers=1) as ex:
        fut = ex.submit(holds_a_lock)
        with pytest.raises(pickle.PicklingError, match="holds_a_lock"):
            fut.result(timeout=BOUND)
        assert ex.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
