"""The timer thread that keeps task deadlines and retry delays.

Fast tests of the core: no worker process, no backend beyond ``thread``.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import executors
from executors._control import Timer, timer

pytestmark = pytest.mark.timeout(30)


def test_callbacks_run_in_deadline_order() -> None:
    clock = Timer()
    ran: list[str] = []
    done = threading.Event()
    clock.call_later(0.2, lambda: (ran.append("late"), done.set()))
    clock.call_later(0.05, lambda: ran.append("early"))
    assert done.wait(10)
    assert ran == ["early", "late"]


def test_a_cancelled_callback_never_runs() -> None:
    clock = Timer()
    ran = threading.Event()
    after = threading.Event()
    clock.call_later(0.05, ran.set).cancel()
    clock.call_later(0.1, after.set)
    assert after.wait(10)
    assert not ran.is_set()


def test_an_earlier_deadline_wakes_the_thread() -> None:
    clock = Timer()
    clock.call_later(60, lambda: None)  # the thread now sleeps for a minute
    fired = threading.Event()
    start = time.monotonic()
    clock.call_later(0.05, fired.set)
    assert fired.wait(10)
    assert time.monotonic() - start < 5


def _in_forked_child(body: object) -> int:
    """Run ``body()`` in a forked child; return its exit code (0: it held)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            code = 0 if body() else 1  # type: ignore[operator]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_timer_fires_in_a_forked_child() -> None:
    # The parent's timer thread is running when the child is forked; the
    # child has its heap and its "started" mark but not the thread.
    started = threading.Event()
    timer.call_later(0, started.set)
    assert started.wait(10)

    def body() -> bool:
        fired = threading.Event()
        timer.call_later(0.05, fired.set)
        return fired.wait(5)

    assert _in_forked_child(body) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_task_timeout_fires_in_a_forked_child() -> None:
    started = threading.Event()
    timer.call_later(0, started.set)
    assert started.wait(10)

    def body() -> bool:
        with executors.create("thread", max_workers=1, task_timeout=0.1) as ex:
            future = ex.submit(time.sleep, 3)
            try:
                future.result(timeout=2)
            except executors.TaskTimeoutError:
                return True
            except BaseException:
                return False
            return False

    assert _in_forked_child(body) == 0
