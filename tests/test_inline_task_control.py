"""Task control on ``inline``: the same options as every backend, run in place.

A program that sets ``task_timeout``, ``retries``, ``retry_on`` or
``retry_delay`` (at ``create()`` or through ``with_options``) switches to
``inline`` to debug without a change: each attempt runs in the caller,
inside ``submit``, and a task cannot be stopped, so a timeout is found
when the call returns.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import executors
from executors import TaskTimeoutError, with_options
from executors.testing import BOUND, tasks

pytestmark = pytest.mark.timeout(60)


class Attempts:
    """A task that records each attempt (its thread) and fails the first ``n``."""

    def __init__(
        self,
        fail: int,
        error: type[BaseException] = tasks.Flaky,
        *,
        sleep_first: float = 0.0,
    ) -> None:
        self.fail = fail
        self.error = error
        self.sleep_first = sleep_first
        self.threads: list[threading.Thread] = []

    @property
    def count(self) -> int:
        return len(self.threads)

    def __call__(self, value: Any = "ok") -> Any:
        self.threads.append(threading.current_thread())
        if self.count == 1 and self.sleep_first:
            time.sleep(self.sleep_first)
        if self.count <= self.fail:
            raise self.error(f"attempt {self.count} fails")
        return value


@pytest.fixture
def inline() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(**options: Any) -> Any:
        ex = executors.create("inline", **options)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True)


# -- create() and the declared capabilities ------------------------------------


def test_create_takes_every_task_option(inline: Callable[..., Any]) -> None:
    ex = inline(task_timeout=30, retries=2, retry_on=tasks.Flaky, retry_delay=0)
    assert ex.submit(tasks.add, 1, 2).result(timeout=0) == 3


def test_capabilities_declare_task_control_without_stopping() -> None:
    caps = executors.create("inline").capabilities
    assert caps.task_control
    # A task runs in the caller's own thread: nothing can stop it alone.
    assert not caps.stops_timed_out_tasks
    assert not caps.kills_single_task
    assert not caps.terminates_workers
    info = {b.name: b for b in executors.list_backends()}["inline"]
    assert info.capabilities is not None and info.capabilities.task_control


# -- retries -------------------------------------------------------------------


def test_a_listed_exception_is_retried_in_place(inline: Callable[..., Any]) -> None:
    fn = Attempts(fail=1)
    ex = inline(retries=1, retry_on=tasks.Flaky)
    fut = ex.submit(fn, "done")
    # Done when submit returns, every attempt in the caller's thread.
    assert fut.done()
    assert fut.result() == "done"
    assert fn.threads == [threading.current_thread()] * 2


def test_an_unlisted_exception_is_not_retried(inline: Callable[..., Any]) -> None:
    fn = Attempts(fail=1)
    ex = inline(retries=3, retry_on=KeyError)
    with pytest.raises(tasks.Flaky, match="attempt 1 fails"):
        ex.submit(fn).result(timeout=0)
    assert fn.count == 1


def test_without_retry_on_an_exception_is_not_retried(
    inline: Callable[..., Any],
) -> None:
    # By default only a dead worker earns a retry, and no worker dies here.
    fn = Attempts(fail=1)
    with pytest.raises(tasks.Flaky):
        inline(retries=3).submit(fn).result(timeout=0)
    assert fn.count == 1


def test_the_last_failure_reports_its_attempts(inline: Callable[..., Any]) -> None:
    fn = Attempts(fail=10)
    ex = inline(retries=2, retry_on=tasks.Flaky)
    with pytest.raises(tasks.Flaky, match="attempt 3 fails") as caught:
        ex.submit(fn).result(timeout=0)
    assert fn.count == 3
    assert getattr(caught.value, "attempts", None) == 3
    if sys.version_info >= (3, 11):
        assert "(failed after 3 attempts)" in caught.value.__notes__


def test_with_options_sets_one_submit(inline: Callable[..., Any]) -> None:
    ex = inline()
    fn = Attempts(fail=2)
    wrapped = with_options(fn, retries=2, retry_on=tasks.Flaky)
    assert ex.submit(wrapped, "per call").result(timeout=0) == "per call"
    assert fn.count == 3
    # The executor's own default stays: no retries for the next task.
    other = Attempts(fail=1)
    with pytest.raises(tasks.Flaky):
        ex.submit(other).result(timeout=0)
    assert other.count == 1


def test_with_options_overrides_the_executor_defaults(
    inline: Callable[..., Any],
) -> None:
    ex = inline(retries=5, retry_on=tasks.Flaky)
    fn = Attempts(fail=10)
    with pytest.raises(tasks.Flaky):
        ex.submit(with_options(fn, retries=1)).result(timeout=0)
    assert fn.count == 2


def test_map_retries_each_item(inline: Callable[..., Any]) -> None:
    ex = inline()
    fns = [Attempts(fail=1) for _ in range(4)]
    flaky = with_options(lambda i: fns[i](i), retries=1, retry_on=tasks.Flaky)
    assert list(ex.map(flaky, range(4))) == [0, 1, 2, 3]
    assert [fn.count for fn in fns] == [2, 2, 2, 2]


def test_the_shipped_fail_first_task_is_retried(
    inline: Callable[..., Any], tmp_path: Any
) -> None:
    fn = with_options(tasks.fail_first, retries=1, retry_on=tasks.Flaky)
    assert inline().submit(fn, str(tmp_path / "once"), "ok").result(timeout=0) == "ok"


def test_the_final_error_keeps_the_task_frames(inline: Callable[..., Any]) -> None:
    ex = inline(retries=1, retry_on=KeyError)
    error = ex.submit(tasks.raise_custom, 7).exception(timeout=0)
    assert isinstance(error, tasks.CustomError)
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert frames[-1] == "raise_custom"


def test_a_retry_delay_waits_in_place(inline: Callable[..., Any]) -> None:
    fn = Attempts(fail=2)
    ex = inline(retries=2, retry_on=tasks.Flaky, retry_delay=0.2)
    start = time.monotonic()
    fut = ex.submit(fn)
    took = time.monotonic() - start
    assert fut.done() and fut.result() == "ok"
    # Two delays, slept by submit itself: a lower bound only, the machine
    # may be slow.
    assert took >= 0.4
    assert fn.threads == [threading.current_thread()] * 3


def test_ctrl_c_during_a_retry_delay_reaches_the_caller(
    inline: Callable[..., Any],
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C is delivered to the main thread")
    main = threading.main_thread().ident
    assert main is not None
    sent = threading.Event()

    def ctrl_c_soon() -> None:
        time.sleep(0.3)
        sent.set()
        signal.pthread_kill(main, signal.SIGINT)

    def first_fails_then_ctrl_c(fn: Attempts) -> Any:
        if fn.count == 0:
            threading.Thread(target=ctrl_c_soon, daemon=True).start()
        return fn()

    fn = Attempts(fail=1)
    ex = inline(retries=1, retry_on=tasks.Flaky, retry_delay=60)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.submit(first_fails_then_ctrl_c, fn)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent.is_set()
    # The delay was cut short, and the second attempt never ran.
    assert time.monotonic() - start < BOUND
    assert fn.count == 1


def test_a_task_raising_keyboard_interrupt_is_never_retried(
    inline: Callable[..., Any],
) -> None:
    # Ctrl-C belongs to the caller, who is running the task, whatever
    # retry_on says.
    fn = Attempts(fail=5, error=KeyboardInterrupt)
    ex = inline(retries=3, retry_on=BaseException)
    with pytest.raises(KeyboardInterrupt):
        ex.submit(fn)
    assert fn.count == 1


# -- timeouts ------------------------------------------------------------------


def test_a_task_past_its_timeout_fails_its_future(inline: Callable[..., Any]) -> None:
    ex = inline()
    fn = Attempts(fail=0, sleep_first=0.5)
    fut = ex.submit(with_options(fn, timeout=0.1), "late")
    assert fut.done()
    with pytest.raises(TaskTimeoutError, match=r"timeout of 0\.1 s") as caught:
        fut.result(timeout=0)
    assert caught.value.timeout == 0.1
    # It ran to its end (in the caller): the message must not claim a stop.
    assert fn.count == 1
    assert "stopped" not in str(caught.value)
    assert "cannot stop" in str(caught.value)
    # The executor lives on.
    assert ex.submit(tasks.add, 2, 3).result(timeout=0) == 5


def test_a_task_under_its_timeout_keeps_its_result(
    inline: Callable[..., Any],
) -> None:
    ex = inline(task_timeout=BOUND)
    assert ex.submit(tasks.sleep_and_return, 0.01, "in time").result() == "in time"


def test_task_timeout_at_create_applies_to_every_task(
    inline: Callable[..., Any],
) -> None:
    ex = inline(task_timeout=0.1)
    with pytest.raises(TaskTimeoutError):
        ex.submit(tasks.sleep_and_return, 0.4, "late").result(timeout=0)
    # A per-call limit replaces it.
    wrapped = with_options(tasks.sleep_and_return, timeout=BOUND)
    assert ex.submit(wrapped, 0.4, "given more").result() == "given more"


def test_a_timed_out_task_keeps_its_own_error_as_context(
    inline: Callable[..., Any],
) -> None:
    fn = Attempts(fail=1, sleep_first=0.3)
    ex = inline(task_timeout=0.1)
    # Even when submitted while the caller handles an exception of its own.
    try:
        raise LookupError("the caller's own")
    except LookupError:
        fut = ex.submit(fn)
    error = fut.exception(timeout=0)
    assert isinstance(error, TaskTimeoutError)
    assert isinstance(error.__context__, tasks.Flaky)


def test_a_timeout_is_retried_only_when_listed(inline: Callable[..., Any]) -> None:
    listed = Attempts(fail=0, sleep_first=0.3)
    ex = inline(task_timeout=0.1, retries=1, retry_on=TaskTimeoutError)
    assert ex.submit(listed, "second try").result(timeout=0) == "second try"
    assert listed.count == 2

    unlisted = Attempts(fail=0, sleep_first=0.3)
    ex = inline(task_timeout=0.1, retries=1, retry_on=tasks.Flaky)
    with pytest.raises(TaskTimeoutError):
        ex.submit(unlisted).result(timeout=0)
    assert unlisted.count == 1


def test_a_timeout_that_uses_every_attempt_reports_them(
    inline: Callable[..., Any],
) -> None:
    ex = inline(task_timeout=0.05, retries=1, retry_on=TaskTimeoutError)
    with pytest.raises(TaskTimeoutError) as caught:
        ex.submit(tasks.sleep_and_return, 0.2).result(timeout=0)
    assert getattr(caught.value, "attempts", None) == 2


def test_map_applies_the_timeout_to_each_item(inline: Callable[..., Any]) -> None:
    ex = inline()
    fn = with_options(tasks.sleep_and_return, timeout=2.0)
    got: list[Any] = []
    with pytest.raises(TaskTimeoutError):
        for value in ex.map(fn, [0.01, 0.01, 2.5, 0.01], range(4)):
            got.append(value)
    assert got == [0, 1]


def test_a_task_may_submit_with_options_to_its_own_executor(
    inline: Callable[..., Any],
) -> None:
    ex = inline()
    inner = Attempts(fail=1)

    def outer() -> Any:
        fut = ex.submit(with_options(inner, retries=1, retry_on=tasks.Flaky), "in")
        return fut.result(timeout=0)

    wrapped = with_options(outer, timeout=BOUND, retries=1, retry_on=tasks.Flaky)
    assert ex.submit(wrapped).result(timeout=0) == "in"
    assert inner.count == 2


# -- kill_task -------------------------------------------------------------------


def test_kill_task_returns_false(inline: Callable[..., Any]) -> None:
    # A running inline task is the caller itself: it cannot be stopped alone.
    ex = inline(task_timeout=BOUND)
    done = ex.submit(tasks.add, 1, 1)
    assert ex.kill_task(done) is False
    assert done.result() == 2
    assert ex.kill_task(Future()) is False
