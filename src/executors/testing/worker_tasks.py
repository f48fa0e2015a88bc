"""Task functions of the workers' conformance classes (:mod:`.workers`).

Importable by spawned workers, without pytest: imports nothing of the
suite.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import executors

#: The logger the flood and the order tests log on.
FLOOD_LOGGER = "executors.testing.flood"
#: The logger of single records.
RECORD_LOGGER = "executors.testing.record"


def who() -> tuple[int | None, int, int]:
    """``(worker_id(), pid, thread ident)`` of the worker running this."""
    return executors.worker_id(), os.getpid(), threading.get_ident()


def slow_who(seconds: float) -> tuple[int | None, int, int]:
    time.sleep(seconds)
    return who()


def count_in_state() -> tuple[int | None, int, int, int]:
    """``who()`` and how many tasks this worker's state has seen."""
    state = executors.worker_state()
    state["count"] = state.get("count", 0) + 1
    return (*who(), state["count"])


def state_keys() -> tuple[int, list[str]]:
    return os.getpid(), sorted(map(str, executors.worker_state()))


def fill_state(value: str) -> None:
    """An initializer: what it puts in the state, the tasks find."""
    executors.worker_state()["loaded"] = value


def read_state() -> Any:
    return executors.worker_state().get("loaded")


def rendezvous(folder: str, count: int, bound: float) -> tuple[int | None, int, int]:
    """Wait until ``count`` tasks run at once (bounded); return ``who()``."""
    me = who()
    Path(folder, f"{me[1]}-{me[2]}").touch()
    deadline = time.monotonic() + bound
    while len(os.listdir(folder)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return me


def crash_and_tell(folder: str) -> None:
    """Write this worker's slot and pid, then die."""
    wid, pid, _ = who()
    Path(folder, "crashed").write_text(f"{wid} {pid}")
    os._exit(3)


def write_finalized(folder: str) -> None:
    """A finalizer: one file per worker, named by its slot, pid and thread."""
    wid, pid, ident = who()
    Path(folder, f"{wid}-{pid}-{ident}").touch()


def failing_finalizer(tag: str) -> None:
    raise ValueError(f"finalizer failed: {tag}")


def log_record(level: int, message: str, *args: Any, fail: bool = False) -> int:
    """Log one record (with a traceback when ``fail``); return the pid."""
    logger = logging.getLogger(RECORD_LOGGER)
    if fail:
        try:
            raise KeyError("the task's own error")
        except KeyError:
            logger.log(level, message, *args, exc_info=True)
    else:
        logger.log(level, message, *args, extra={"tag": "extra-value"})
    return os.getpid()


def flood(task: int, count: int) -> tuple[int | None, int]:
    """Log ``count`` numbered records; return ``(worker_id(), pid)``."""
    logger = logging.getLogger(FLOOD_LOGGER)
    for seq in range(count):
        logger.info("task %d record %d", task, seq)
    return executors.worker_id(), os.getpid()


def keep_megabytes(megabytes: int) -> tuple[int, int, int]:
    """Allocate and keep ``megabytes`` in this worker; ``(pid, rss, slot)``."""
    from executors._workers import rss_bytes

    kept = executors.worker_state().setdefault("kept", [])
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    kept.append(block)
    wid = executors.worker_id()
    return os.getpid(), rss_bytes(), -1 if wid is None else wid


def thread_limits() -> tuple[str | None, list[int]]:
    """``OMP_NUM_THREADS`` and the BLAS pools' sizes that threadpoolctl sees."""
    sizes: list[int] = []
    try:
        importlib.import_module("numpy")  # loads its BLAS
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        pass
    else:
        sizes = [int(pool["num_threads"]) for pool in threadpoolctl.threadpool_info()]
    return os.environ.get("OMP_NUM_THREADS"), sizes


def nested_sum(backend: str, count: int) -> int:
    """Create an executor inside a task and use it."""
    with executors.create(backend, max_workers=2) as inner:
        return sum(inner.map(abs, range(-count, 0)))


def finish_task() -> tuple[int, bool]:
    """What a worker loop does after a task: ``(pid, after_task())``."""
    from executors._workers import after_task

    return os.getpid(), after_task()


def start_as(spec: Any, index: int) -> None:
    """An initializer: start as the worker of slot ``index``, as a queue worker."""
    spec.start(index)


def fork_and_log() -> int:
    """Fork a child that logs and runs the exit hooks; log after. Child's pid."""
    import atexit

    logger = logging.getLogger(RECORD_LOGGER)
    child = os.fork()
    if child == 0:
        try:
            logger.warning("from the forked child")
            atexit._run_exitfuncs()  # as a child that ends normally would
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    logger.warning("after the fork")
    return child


def keep_and_finish(megabytes: int) -> tuple[int, int, int]:
    """:func:`keep_megabytes`, then what ``run_call`` does after a task."""
    from executors._workers import after_task

    found = keep_megabytes(megabytes)
    after_task()
    return found


def tick_and_finish(seconds: float) -> tuple[int | None, int]:
    """Sleep, then what ``run_call`` does after a task: ``(slot, pid)``."""
    from executors._workers import after_task

    time.sleep(seconds)
    after_task()
    return executors.worker_id(), os.getpid()
