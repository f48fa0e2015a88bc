"""Future, settle() and the callback thread; the reaper of dropped executors."""

from __future__ import annotations

import gc
import logging
import threading
from concurrent import futures
from typing import Any

import pytest

from executors._futures import (
    Future,
    drain_callbacks,
    fail_futures,
    notify_cancelled,
    settle,
)
from executors._lifecycle import close_when_collected

pytestmark = pytest.mark.timeout(30)


class FalsyError(Exception):
    """An exception whose bool() is False (as one that is also a container)."""

    def __bool__(self) -> bool:
        return False


def test_a_falsy_exception_raises() -> None:
    stdlib: futures.Future[Any] = futures.Future()
    stdlib.set_exception(FalsyError())
    assert stdlib.result() is None  # the stdlib's flaw this Future fixes
    ours: Future[Any] = Future()
    settle(ours, error=FalsyError())
    with pytest.raises(FalsyError):
        ours.result()


def test_settle_reports_whether_it_settled() -> None:
    future: Future[Any] = Future()
    assert settle(future, 1)
    assert not settle(future, 2)
    assert future.result() == 1
    cancelled: Future[Any] = Future()
    cancelled.cancel()
    assert not settle(cancelled, error=RuntimeError())


def test_callbacks_of_a_settled_future_run_on_the_callback_thread() -> None:
    future: Future[Any] = Future()
    ran_in: list[str] = []
    future.add_done_callback(lambda f: ran_in.append(threading.current_thread().name))
    settle(future, 1)
    assert drain_callbacks(10)
    assert ran_in == ["executors-callbacks"]


def test_a_callback_added_after_settling_runs_at_once_in_the_caller() -> None:
    future: Future[Any] = Future()
    settle(future, 1)
    ran_in: list[str] = []
    future.add_done_callback(lambda f: ran_in.append(threading.current_thread().name))
    assert ran_in == [threading.current_thread().name]


@pytest.mark.parametrize("raised", [SystemExit(1), KeyboardInterrupt(), ValueError()])
def test_a_callback_that_raises_is_logged_and_the_next_ones_still_run(
    raised: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    future: Future[Any] = Future()

    def bad(_: object) -> None:
        raise raised

    after = threading.Event()
    future.add_done_callback(bad)
    future.add_done_callback(lambda f: after.set())
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        settle(future, 1)
        assert after.wait(10)
        assert drain_callbacks(10)
    assert "exception calling callback" in caplog.text


def test_a_callback_may_wait_on_another_future_settled_later() -> None:
    # Settled from one "pool thread": the callback of the first future
    # waits for the second, which the same thread settles next.
    first: Future[Any] = Future()
    second: Future[Any] = Future()
    seen: list[object] = []
    first.add_done_callback(lambda f: seen.append(second.result(timeout=10)))

    def pool_thread() -> None:
        settle(first, 1)
        settle(second, 2)

    thread = threading.Thread(target=pool_thread)
    thread.start()
    thread.join(10)
    assert drain_callbacks(10)
    assert seen == [2]


def test_a_settled_future_holds_no_callback() -> None:
    future: Future[Any] = Future()
    future.add_done_callback(lambda f: None)
    settle(future, 1)
    assert future._done_callbacks == []


def test_fail_futures_gives_each_its_own_exception() -> None:
    pending: list[Future[Any]] = [Future() for _ in range(3)]
    done: Future[Any] = Future()
    settle(done, "kept")
    fail_futures([*pending, done], lambda: RuntimeError("broken"))
    errors = [f.exception() for f in pending]
    assert len({id(e) for e in errors}) == 3
    assert done.result() == "kept"


def test_notify_cancelled_wakes_wait_and_as_completed() -> None:
    future: Future[Any] = Future()
    future.cancel()
    waiter: list[object] = []
    thread = threading.Thread(
        target=lambda: waiter.append(futures.wait([future], timeout=10))
    )
    thread.start()
    notify_cancelled([future])
    thread.join(10)
    done, not_done = waiter[0]  # type: ignore[misc]
    assert future in done
    assert not not_done
    # Twice is harmless: it was notified already.
    notify_cancelled([future])


# -- the reaper of executors dropped without shutdown() -----------------------


class Owner:
    pass


def test_the_close_step_runs_on_the_reaper_when_the_owner_is_collected() -> None:
    closed_in: list[str] = []
    done = threading.Event()

    def close() -> None:
        closed_in.append(threading.current_thread().name)
        done.set()

    owner = Owner()
    close_when_collected(owner, close)
    del owner
    gc.collect()
    assert done.wait(10)
    assert closed_in == ["executors-reaper"]


def test_a_detached_close_step_never_runs() -> None:
    ran = threading.Event()
    owner = Owner()
    finalizer = close_when_collected(owner, ran.set)
    finalizer.detach()
    del owner
    gc.collect()
    # Another owner's step runs after it on the same thread: a sign the
    # reaper came past without running the detached one.
    after = threading.Event()
    other = Owner()
    close_when_collected(other, after.set)
    del other
    gc.collect()
    assert after.wait(10)
    assert not ran.is_set()
