"""CallQueue with a fake launcher: the queue of futures, tested in milliseconds.

The launcher only records the calls it is handed; each test settles them
by hand, so every rule of the queue (window, exact cancellation, retries,
timeouts, break, close) is checked without a worker process.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import pytest

from executors import TaskTimeoutError, WorkerCrashedError
from executors._callqueue import Call, CallQueue
from executors._control import TaskOptions, submitting
from executors._futures import Future

pytestmark = pytest.mark.timeout(30)


class FakeLibrary:
    """Records launched calls; stops one when asked, if ``can_stop``."""

    def __init__(self, can_stop: bool = True) -> None:
        self.launched: list[Call] = []
        #: What each launch carried (a settled call drops its payload).
        self.payloads: list[object] = []
        self.stopped: list[Call] = []
        self.can_stop = can_stop
        self.launches = threading.Semaphore(0)

    def launch(self, call: Call) -> None:
        self.launched.append(call)
        self.payloads.append(call.payload)
        self.launches.release()

    def stop(self, call: Call) -> bool:
        self.stopped.append(call)
        return self.can_stop


@pytest.fixture
def library() -> FakeLibrary:
    return FakeLibrary()


def make_queue(library: FakeLibrary, window: int = 2, **options: Any) -> CallQueue:
    return CallQueue(library.launch, window, stop=library.stop, **options)


def submit(calls: CallQueue, payload: object = None) -> Future[Any]:
    future: Future[Any] = Future()
    calls.submit(future, payload)
    return future


def options(**fields: Any) -> TaskOptions:
    return TaskOptions(**fields)


# -- the window ----------------------------------------------------------------


def test_at_most_window_calls_are_launched(library: FakeLibrary) -> None:
    calls = make_queue(library, window=2)
    futures = [submit(calls, n) for n in range(5)]
    assert library.payloads == [0, 1]
    assert [f.running() for f in futures] == [True, True, False, False, False]
    calls.settle(library.launched[0], "zero")
    assert library.payloads == [0, 1, 2]
    assert futures[0].result() == "zero"


def test_a_window_read_before_each_launch_can_grow(library: FakeLibrary) -> None:
    size = [1]
    calls = CallQueue(library.launch, lambda: size[0])
    submit(calls)
    submit(calls)
    assert len(library.launched) == 1
    size[0] = 2
    calls.pump()
    assert len(library.launched) == 2


def test_a_launch_that_settles_at_once_does_not_recurse() -> None:
    depth = [0, 0]
    calls: CallQueue

    def launch(call: Call) -> None:
        depth[0] += 1
        depth[1] = max(depth)
        calls.settle(call, call.payload)
        depth[0] -= 1

    calls = CallQueue(launch, 1)
    futures = [submit(calls, n) for n in range(2000)]
    assert [f.result() for f in futures] == list(range(2000))
    assert depth[1] == 1


def test_a_launch_that_raises_fails_only_its_call() -> None:
    def launch(call: Call) -> None:
        if call.payload == "bad":
            raise OSError("the library refused it")
        call.handle = "taken"

    calls = CallQueue(launch, 4, translate=lambda exc: RuntimeError(str(exc)))
    bad = submit(calls, "bad")
    good = submit(calls, "good")
    with pytest.raises(RuntimeError, match="refused"):
        bad.result()
    assert good.running()


# -- exact cancellation ----------------------------------------------------------


def test_a_queued_future_cancels_and_the_library_never_sees_it(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library, window=1)
    first = submit(calls, "first")
    second = submit(calls, "second")
    assert second.cancel()
    calls.settle(library.launched[0], 1)
    assert first.result() == 1
    assert library.payloads == ["first"]
    assert calls.is_idle()


def test_a_launched_future_does_not_cancel(library: FakeLibrary) -> None:
    calls = make_queue(library, window=1)
    future = submit(calls)
    assert not future.cancel()
    calls.settle(library.launched[0], 7)
    assert future.result() == 7


def test_a_settled_call_drops_its_payload(library: FakeLibrary) -> None:
    calls = make_queue(library)
    submit(calls, ["big", "payload"])
    call = library.launched[0]
    calls.settle(call, None)
    assert call.payload is None
    assert call.handle is None


def test_a_second_settle_of_one_call_is_ignored(library: FakeLibrary) -> None:
    calls = make_queue(library)
    future = submit(calls)
    call = library.launched[0]
    assert calls.settle(call, 1)
    assert not calls.settle(call, 2)
    assert future.result() == 1


# -- retries -----------------------------------------------------------------------


def test_a_retryable_error_launches_the_call_again(library: FakeLibrary) -> None:
    calls = make_queue(library)
    with submitting(options(retries=2, retry_on=(ValueError,))):
        future = submit(calls, "task")
    calls.settle(library.launched[0], error=ValueError("first"))
    assert len(library.launched) == 2
    assert library.launched[1] is not library.launched[0]
    assert not future.done()
    calls.settle(library.launched[1], error=ValueError("second"))
    calls.settle(library.launched[2], error=ValueError("third"))
    with pytest.raises(ValueError, match="third") as info:
        future.result()
    assert info.value.attempts == 3  # type: ignore[attr-defined]


def test_a_late_outcome_of_an_earlier_attempt_settles_nothing(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library)
    with submitting(options(retries=1, retry_on=(ValueError,))):
        future = submit(calls)
    first = library.launched[0]
    calls.settle(first, error=ValueError())
    assert not calls.settle(first, "late")
    calls.settle(library.launched[1], "second")
    assert future.result() == "second"


def test_a_retry_waits_its_delay_and_the_queue_is_not_idle_meanwhile(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library)
    with submitting(options(retries=1, retry_on=(ValueError,), retry_delay=0.3)):
        future = submit(calls)
    start = time.monotonic()
    calls.settle(library.launched[0], error=ValueError())
    assert not calls.is_idle()
    assert library.launches.acquire(timeout=10)  # the first launch
    assert library.launches.acquire(timeout=10)  # the retry, after its delay
    assert time.monotonic() - start >= 0.25
    calls.settle(library.launched[1], "ok")
    assert future.result() == "ok"
    assert calls.is_idle()


def test_a_crash_is_retried_only_where_the_backend_survives_it(
    library: FakeLibrary,
) -> None:
    for survives, launches in ((True, 2), (False, 1)):
        library.launched.clear()
        calls = make_queue(library, retries_crashes=survives)
        with submitting(options(retries=1)):
            submit(calls)
        calls.settle(library.launched[0], error=WorkerCrashedError("died"))
        assert len(library.launched) == launches


# -- timeouts ----------------------------------------------------------------------


def test_a_timeout_stops_the_task_and_fails_the_future(library: FakeLibrary) -> None:
    calls = make_queue(library)
    with submitting(options(timeout=0.1)):
        future = submit(calls)
    with pytest.raises(TaskTimeoutError, match="stopped and its worker replaced"):
        future.result(timeout=10)
    assert library.stopped == library.launched
    # The worker's late outcome settles nothing.
    assert not calls.settle(library.launched[0], "late")


def test_a_task_that_cannot_be_stopped_is_abandoned_and_keeps_its_payload() -> None:
    library = FakeLibrary(can_stop=False)
    calls = make_queue(library)
    with submitting(options(timeout=0.1)):
        future = submit(calls, "still read by the library")
    with pytest.raises(TaskTimeoutError, match="abandoned"):
        future.result(timeout=10)
    assert library.launched[0].payload == "still read by the library"


def test_a_call_with_a_timeout_waits_for_a_free_slot(library: FakeLibrary) -> None:
    # The window lets 4 calls into the library, but only 1 runs at once:
    # a call with a timeout must not start its clock in the library's queue.
    calls = make_queue(library, window=4, slots=1)
    submit(calls, "plain")
    with submitting(options(timeout=30)):
        timed = submit(calls, "timed")
    assert library.payloads == ["plain"]
    calls.settle(library.launched[0], None)
    assert library.payloads == ["plain", "timed"]
    calls.settle(library.launched[1], "done")
    assert timed.result() == "done"


def test_an_outcome_before_the_deadline_cancels_it(library: FakeLibrary) -> None:
    calls = make_queue(library)
    with submitting(options(timeout=0.2)):
        future = submit(calls)
    calls.settle(library.launched[0], "in time")
    time.sleep(0.4)
    assert future.result() == "in time"
    assert library.stopped == []


# -- closing and breaking ------------------------------------------------------------


def test_close_lets_queued_calls_run_then_reports_idle_once(
    library: FakeLibrary,
) -> None:
    idle: list[bool] = []
    calls = make_queue(library, window=1, on_idle=lambda: idle.append(True))
    futures = [submit(calls, n) for n in range(3)]
    calls.close()
    assert idle == []
    for n in range(3):
        calls.settle(library.launched[n], n)
    assert [f.result() for f in futures] == [0, 1, 2]
    assert idle == [True]
    calls.close()
    assert idle == [True]


def test_close_with_cancel_futures_cancels_only_the_queued(
    library: FakeLibrary,
) -> None:
    idle = threading.Event()
    calls = make_queue(library, window=1, on_idle=idle.set)
    running = submit(calls)
    queued = [submit(calls) for _ in range(3)]
    calls.close(cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert not idle.is_set()
    calls.settle(library.launched[0], "ran")
    assert running.result() == "ran"
    assert idle.is_set()


def test_close_of_an_idle_queue_reports_idle_at_once(library: FakeLibrary) -> None:
    idle = threading.Event()
    calls = make_queue(library, on_idle=idle.set)
    calls.close()
    assert idle.is_set()


def test_break_fails_every_unsettled_future_each_with_its_own_error(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library, window=1)
    futures = [submit(calls) for _ in range(3)]
    launched = calls.break_(lambda: WorkerCrashedError("gone"))
    assert launched == library.launched[:1]
    errors = [f.exception() for f in futures]
    assert all(isinstance(e, WorkerCrashedError) for e in errors)
    assert len({id(e) for e in errors}) == 3
    # Later calls fail at once; a late outcome settles nothing.
    later = submit(calls)
    assert isinstance(later.exception(), WorkerCrashedError)
    assert isinstance(calls.broken_error(), WorkerCrashedError)
    assert not calls.settle(launched[0], "late")
    # The first break wins.
    assert calls.break_(lambda: RuntimeError("second")) == []
    assert isinstance(calls.broken_error(), WorkerCrashedError)


def test_a_retry_delayed_past_a_break_fails_with_the_break(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library)
    with submitting(options(retries=1, retry_on=(ValueError,), retry_delay=0.2)):
        future = submit(calls)
    calls.settle(library.launched[0], error=ValueError())
    calls.break_(lambda: WorkerCrashedError("gone"))
    with pytest.raises(WorkerCrashedError):
        future.result(timeout=10)
    time.sleep(0.3)
    assert len(library.launched) == 1
    assert calls.is_idle()


def test_fail_launched_settles_the_running_and_keeps_the_queued(
    library: FakeLibrary,
) -> None:
    calls = make_queue(library, window=1)
    running = submit(calls)
    queued = submit(calls)
    calls.fail_launched(lambda: RuntimeError("stopped"))
    with pytest.raises(RuntimeError, match="stopped"):
        running.result()
    assert not queued.done()


def test_wait_idle_wakes_when_the_last_call_settles(library: FakeLibrary) -> None:
    calls = make_queue(library)
    submit(calls)
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: calls.wait_idle(10) and woke.set())
    waiter.start()
    time.sleep(0.05)
    assert not woke.is_set()
    calls.settle(library.launched[0], None)
    waiter.join(10)
    assert woke.is_set()


def test_a_cancelled_queued_future_does_not_hold_up_as_completed(
    library: FakeLibrary,
) -> None:
    from concurrent.futures import as_completed

    calls = make_queue(library, window=1)
    running = submit(calls)
    queued = submit(calls)
    queued.cancel()
    calls.close(cancel_futures=True)
    calls.settle(library.launched[0], 1)
    done = list(as_completed([running, queued], timeout=10))
    assert set(done) == {running, queued}
    with pytest.raises(CancelledError):
        queued.result()


def test_a_ctrl_c_while_launching_fails_the_call_and_reaches_the_caller() -> None:
    # The submitting thread launches; a KeyboardInterrupt there is the
    # caller's: swallowed, the program would go on as if submit returned.
    def launch(call: Call) -> None:
        raise KeyboardInterrupt

    calls = CallQueue(launch, 1)
    future: Future[Any] = Future()
    with pytest.raises(KeyboardInterrupt):
        calls.submit(future, "payload")
    assert isinstance(future.exception(timeout=5), KeyboardInterrupt)


def test_a_call_waiting_out_its_retry_delay_fails_at_once_when_the_workers_stop() -> (
    None
):
    # terminate_workers() with a long retry delay pending used to return
    # only after the delay, when the call came back to be failed.
    launched: list[Call] = []
    calls = CallQueue(launched.append, 1)
    future: Future[Any] = Future()
    with submitting(TaskOptions(retries=1, retry_on=(ValueError,), retry_delay=30.0)):
        calls.submit(future, "payload")
    calls.settle(launched[0], error=ValueError("first attempt"))
    assert not future.done()
    calls.fail_launched(lambda: RuntimeError("the workers were stopped"))
    with pytest.raises(RuntimeError, match="the workers were stopped"):
        future.result(timeout=5)
    assert calls.is_idle()


def test_kill_task_finds_a_call_waiting_out_its_retry_delay() -> None:
    launched: list[Call] = []
    calls = CallQueue(launched.append, 1)
    future: Future[Any] = Future()
    with submitting(TaskOptions(retries=1, retry_on=(ValueError,), retry_delay=30.0)):
        calls.submit(future, "payload")
    calls.settle(launched[0], error=ValueError("first attempt"))
    waiting = calls.find(future)
    assert waiting is not None and calls.stop(waiting)
    assert calls.settle(waiting, error=RuntimeError("killed"), retry=False)
    with pytest.raises(RuntimeError, match="killed"):
        future.result(timeout=5)


@pytest.mark.parametrize("ending", [False, True])
def test_on_idle_knows_whether_the_workers_are_being_stopped(
    library: FakeLibrary, ending: bool
) -> None:
    # terminate_workers() closes with ending=True: the queue, idle once its
    # running calls fail, must not have on_idle release them gracefully.
    seen: list[bool] = []
    calls: CallQueue
    calls = make_queue(library, on_idle=lambda: seen.append(calls.ending))
    running = submit(calls)
    queued = [submit(calls) for _ in range(3)]
    calls.close(cancel_futures=True, ending=ending)
    assert all(f.cancelled() for f in queued[1:])
    calls.fail_launched(lambda: RuntimeError("stopped"))
    assert running.exception() is not None
    assert seen == [ending]


class _Renewed:
    """A payload that gives each further attempt a fresh copy."""

    def __init__(self, attempt: int = 0) -> None:
        self.attempt = attempt

    def for_another_attempt(self) -> _Renewed:
        return _Renewed(self.attempt + 1)


def test_a_retry_launches_what_the_payload_renews(library: FakeLibrary) -> None:
    calls = make_queue(library)
    with submitting(options(retries=2, retry_on=(ValueError,))):
        future = submit(calls, _Renewed())
    for attempt in range(3):
        assert library.launches.acquire(timeout=5)
        assert library.payloads[-1].attempt == attempt  # type: ignore[attr-defined]
        if attempt < 2:
            calls.settle(library.launched[-1], error=ValueError("again"))
    calls.settle(library.launched[-1], "done")
    assert future.result(timeout=5) == "done"
