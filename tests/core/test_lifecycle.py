"""The lives of executors: the reaper, released steps, the manager thread.

No backend and no worker: each check runs in milliseconds.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import pytest

from _programs import run_python
from executors import _lifecycle
from executors._futures import Future
from executors._lifecycle import (
    ManagerThread,
    close_when_collected,
    join_unless_current,
    run_released,
)

pytestmark = pytest.mark.timeout(30)


class _Owner:
    pass


def test_a_dropped_owner_is_closed_on_the_reaper_thread() -> None:
    ran = threading.Event()
    where: list[str] = []

    def close() -> None:
        where.append(threading.current_thread().name)
        ran.set()

    owner = _Owner()
    close_when_collected(owner, close)
    assert not ran.is_set()
    del owner
    gc.collect()
    assert ran.wait(10)
    assert where == ["executors-reaper"]


def test_a_detached_finalizer_never_closes() -> None:
    ran = threading.Event()
    owner = _Owner()
    close_when_collected(owner, ran.set).detach()
    del owner
    gc.collect()
    # A released step queued after the (absent) closing step: once it has
    # run, the reaper has seen everything queued before it.
    done = threading.Event()
    run_released(done.set)
    assert done.wait(10)
    assert not ran.is_set()


def test_a_released_step_runs_on_the_reaper_not_in_the_caller() -> None:
    where: list[threading.Thread] = []
    done = threading.Event()

    def step() -> None:
        where.append(threading.current_thread())
        done.set()

    run_released(step)
    assert done.wait(10)
    assert where[0] is not threading.current_thread()
    assert where[0].name == "executors-reaper"


def test_a_released_step_that_raises_does_not_stop_the_reaper() -> None:
    def fails() -> None:
        raise RuntimeError("a step failed")

    run_released(fails)
    done = threading.Event()
    run_released(done.set)
    assert done.wait(10)


def test_a_step_released_from_the_reaper_runs_at_once() -> None:
    order: list[str] = []
    done = threading.Event()

    def outer() -> None:
        run_released(lambda: order.append("inner"))
        order.append("outer")
        done.set()

    run_released(outer)
    assert done.wait(10)
    # Queued instead, "inner" would wait behind "outer" for good if the
    # reaper ever waited on it.
    assert order == ["inner", "outer"]


def test_join_unless_current_skips_the_calling_thread_and_unstarted_ones() -> None:
    join_unless_current(threading.current_thread())
    join_unless_current(threading.Thread(target=lambda: None))
    join_unless_current(None)
    worker = threading.Thread(target=lambda: None)
    worker.start()
    join_unless_current(worker, 10)
    assert not worker.is_alive()


def test_a_manager_thread_whose_loop_raises_fails_what_it_owns() -> None:
    owned: Future[Any] = Future()

    class Manager(ManagerThread):
        def loop(self) -> None:
            raise ValueError("the loop broke")

        def on_failure(self, error: BaseException) -> None:
            owned.set_exception(error)

    manager = Manager("test-manager")
    manager.start()
    manager.join(10)
    with pytest.raises(ValueError, match="the loop broke"):
        owned.result(timeout=10)


def test_interpreter_exit_closes_a_live_executor() -> None:
    # The exit hook asks every live executor to finish its work and close.
    script = """
import threading
from executors import _lifecycle

class Owner:
    def close_at_exit(self):
        print("closed at exit", flush=True)

owner = Owner()
_lifecycle.close_at_exit(owner)
print("exiting:", _lifecycle.interpreter_exiting(), flush=True)
"""
    done = run_python("-c", script, timeout=25, PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["exiting: False", "closed at exit"]


def test_the_exit_flag_is_reset_in_a_forked_child() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"1" if not _lifecycle.interpreter_exiting() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
