"""The ``joblib`` backend at the edges: nothing left running, nothing lost.

A caller killed with SIGKILL leaves no worker behind (loky's workers hold
both ends of their call-queue pipe and would never see EOF), and an argument
that cannot be pickled fails with the pickler's own error, as on every other
backend, not with loky's ``PicklingError`` that only quotes it.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import executors
from _programs import Program, alive_at, describe
from executors.testing import BOUND, tasks

# How long the workers of a SIGKILLed caller may take to notice: the brief
# is "about a second"; the rest is slack for a loaded 2-core machine.
GONE_WITHIN = 3.0
# How long a program may take to exit after Ctrl-C: it was interrupted in
# 50 s of work, and must not wait for it.
STOPS_WITHIN = 8.0

MULTIPROCESSING = {"joblib_backend": "multiprocessing"}
PARALLEL_ENGINE = {"map_engine": "parallel"}

# The caller: starts every worker, prints the pids of all its descendants
# (workers, resource trackers, a fork server) and waits to be killed.
_CALLER = """
import json, sys, time
import psutil
import executors
from executors.testing import tasks

if __name__ == "__main__":
    ex = executors.create("joblib", max_workers=2, **json.loads(sys.argv[1]))
    seen = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        futs = [ex.submit(tasks.sleep_then_pid, 0.2) for _ in range(2)]
        seen |= {f.result(timeout=60) for f in futs}
    print("WORKERS", json.dumps(sorted(seen)), flush=True)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    print("DESCENDANTS", json.dumps(pids), flush=True)
    time.sleep(120)
"""

# Ctrl-C in a program without `with`: an eager map of 50 s of work (two
# workers), or the same work left pending when the main thread ends, so that
# the signal arrives while the interpreter waits for it at exit.
_INTERRUPTED = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import json, sys
import psutil
import executors
from executors.testing import tasks

if __name__ == "__main__":
    ex = executors.create("joblib", max_workers=2, **json.loads(sys.argv[1]))
    ex.submit(tasks.noop).result(timeout=60)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    print("DESCENDANTS", json.dumps(pids), flush=True)
    if sys.argv[2] == "map":
        print("RUNNING", flush=True)
        list(ex.map(tasks.sleep_and_return, [1.0] * 100, range(100)))
    else:
        futs = [ex.submit(tasks.sleep_and_return, 1.0, i) for i in range(100)]
        print("RUNNING", flush=True)
"""


@contextlib.contextmanager
def _program(code: str, *args: str) -> Iterator[Program]:
    """Run ``code`` in a session of its own; kill all it started at the end.

    Its descendants are also those it prints after ``DESCENDANTS``: once it
    is killed, they are orphans that no longer show as its children.
    """
    program = Program("-c", code, *args)
    try:
        yield program
    finally:
        program.kill_tree()


def _read(program: Program, tag: str, bound: float = 60.0) -> str:
    """The rest of the next line that starts with ``tag``."""
    return program.line_starting(tag, bound)[len(tag) :].strip()


def _descendants(program: Program) -> list[psutil.Process]:
    return program.track(json.loads(_read(program, "DESCENDANTS")))


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "options", [{}, MULTIPROCESSING], ids=["loky", "multiprocessing"]
)
def test_a_sigkilled_caller_leaves_no_process(options: dict[str, Any]) -> None:
    with _program(_CALLER, json.dumps(options)) as caller:
        workers = json.loads(_read(caller, "WORKERS"))
        descendants = _descendants(caller)
        assert len(workers) == 2
        assert set(workers) <= {p.pid for p in descendants}
        caller.proc.kill()
        caller.proc.wait(timeout=BOUND)
        left = alive_at(descendants, time.monotonic() + GONE_WITHIN)
        assert not left, f"alive after the caller died: {describe(left)}"


# -- Ctrl-C without a with block ------------------------------------------------


# Each case is a fresh program and its workers, seconds apiece.
@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", ["group", "parent"])
@pytest.mark.parametrize(
    ("options", "where"),
    [
        pytest.param({}, "map", id="loky-map"),
        pytest.param(PARALLEL_ENGINE, "map", id="parallel-map"),
        pytest.param({}, "exit", id="loky-exit"),
        pytest.param(MULTIPROCESSING, "exit", id="multiprocessing-exit"),
    ],
)
def test_ctrl_c_without_with_stops_at_once_and_leaves_no_process(
    options: dict[str, Any], where: str, target: str
) -> None:
    """Ctrl-C in an eager map, or while the interpreter waits at exit for
    pending work (which used to hang for good: loky's workers were never
    told to stop, and were left orphaned with the resource trackers once
    the program was killed)."""
    with _program(_INTERRUPTED, json.dumps(options), where) as program:
        descendants = _descendants(program)
        _read(program, "RUNNING")
        time.sleep(1.0)  # inside the map, or in the exit hook's wait
        sent = program.interrupt(target)  # "group": Ctrl-C in a terminal
        code = program.wait(STOPS_WITHIN)
        took = time.monotonic() - sent
        assert code is not None, f"still running {took:.1f}s after Ctrl-C"
        if where == "map":
            # Python re-raises SIGINT for an unhandled KeyboardInterrupt.
            assert code == -signal.SIGINT, program.report()
        left = alive_at(descendants, time.monotonic() + GONE_WITHIN)
        assert not left, f"alive after the program exited: {describe(left)}"


# -- arguments that cannot be pickled -----------------------------------------


def _unpicklable(kind: str) -> Any:
    return threading.Lock() if kind == "lock" else tasks.UnpicklableArg()


def _pickler_error(arg: Any) -> BaseException:
    try:
        pickle.dumps(arg)
    except Exception as exc:
        return exc
    raise AssertionError(f"{arg!r} pickled")


@pytest.fixture
def make_joblib() -> Iterator[Any]:
    created: list[Any] = []

    def make(**options: Any) -> Any:
        executor = executors.create("joblib", max_workers=2, **options)
        created.append(executor)
        return executor

    yield make
    for executor in created:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", [{}, PARALLEL_ENGINE], ids=["shared", "parallel"])
@pytest.mark.parametrize("kind", ["lock", "raising-reduce"])
def test_an_unpicklable_argument_fails_with_the_picklers_error(
    make_joblib: Any, options: dict[str, Any], kind: str
) -> None:
    executor = make_joblib(**options)
    arg = _unpicklable(kind)
    expected = _pickler_error(arg)

    exc = executor.submit(tasks.identity, arg).exception(timeout=BOUND)
    assert type(exc) is type(expected)
    assert exc.args == expected.args
    # Where loky's feeder thread met it, as the stdlib process pool reports.
    assert "Traceback" in str(exc.__cause__)

    got: list[Any] = []
    # No timeout: with one, the "parallel" engine would use the shared map.
    with pytest.raises(type(expected)) as raised:
        for value in executor.map(tasks.identity, [0, 1, arg, 3]):
            got.append(value)
    assert raised.value.args == expected.args
    assert got == [0, 1]
    # Nothing broke.
    assert executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


# A thread initializer that fails once tasks are queued: the stdlib pool
# fails its queued futures holding the lock its submit() takes, and the
# executor's next call was handed over from their callbacks: a deadlock.
_FAILING_THREAD_INITIALIZER = """
import time
import executors
from executors.testing import tasks

def failing_late():
    time.sleep(0.3)
    tasks.failing_init()

if __name__ == "__main__":
    ex = executors.create(
        "joblib", joblib_backend="threading", max_workers=1, initializer=failing_late
    )
    futs = [ex.submit(tasks.noop) for _ in range(10)]
    errors = {type(f.exception(timeout=30)).__name__ for f in futs}
    print("ERRORS", sorted(errors), flush=True)
    ex.shutdown()
    print("DONE", flush=True)
"""


@pytest.mark.timeout(60)
def test_a_failing_thread_initializer_fails_every_task_instead_of_hanging() -> None:
    with _program(_FAILING_THREAD_INITIALIZER) as program:
        assert _read(program, "ERRORS", bound=20) == "['InitializerFailedError']"
        _read(program, "DONE", bound=20)
