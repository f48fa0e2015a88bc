"""Closing a Pool, or dismantling one whose workers may be dead or wedged.

``Pool.terminate()`` can block for good once a worker died holding one of
Pool's locks; these functions stop a Pool without it, each step bounded.
Caller side only.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from .pool import WatchedPoolMixin

__all__ = [
    "CLOSE_SECONDS",
    "DISMANTLE_SECONDS",
    "POLL_SECONDS",
    "close_pool",
    "kill_pool",
    "release_pool",
    "signal_process",
    "stop_replacing",
]

_log = logging.getLogger("executors")

# Poll interval while a worker is being started or its exit is being reaped.
POLL_SECONDS = 0.005
# A graceful close (workers finish and exit) may take this long before the
# remaining workers are killed.
CLOSE_SECONDS = 5.0
# Bound on dismantling a pool with killed workers: joins, drains, unsticking.
DISMANTLE_SECONDS = 5.0


def close_pool(
    pool: WatchedPoolMixin,
    processes: list[BaseProcess],
    abort: Callable[[], bool] = lambda: False,
) -> bool:
    """Close a Pool whose work has drained; False if it did not end in time.

    Also False as soon as ``abort()`` is true (checked every
    :data:`POLL_SECONDS` or so).
    """
    deadline = time.monotonic() + CLOSE_SECONDS
    pool.close()
    for thread in pool.handler_threads:
        while thread.is_alive() and not abort() and _remaining(deadline):
            thread.join(min(POLL_SECONDS * 10, _remaining(deadline)))
    for process in processes:
        while _is_alive(process) and not abort() and _remaining(deadline):
            _join_process(process, min(POLL_SECONDS * 10, _remaining(deadline)))
    if abort():
        return False
    if any(t.is_alive() for t in pool.handler_threads) or any(
        _is_alive(p) for p in processes
    ):
        # Workers still starting on a loaded machine, or one wedged.
        _log.debug("executors: a Pool did not close in time; killing it")
        return False
    return True


def stop_replacing(pool: WatchedPoolMixin, deadline: float) -> None:
    """Stop Pool's worker handler: no worker is replaced from now on."""
    terminate = multiprocessing.pool.TERMINATE
    worker_handler, task_handler, _ = pool.handler_threads
    pool._state = terminate
    worker_handler._state = terminate  # type: ignore[attr-defined]
    task_handler._state = terminate  # type: ignore[attr-defined]
    with contextlib.suppress(OSError):
        pool._change_notifier.put(None)
    if worker_handler is not threading.current_thread():
        worker_handler.join(_remaining(deadline))


def kill_pool(pool: WatchedPoolMixin, workers: Callable[[], list[BaseProcess]]) -> None:
    """Stop a Pool whose workers may be dead or wedged, without blocking.

    ``Pool.terminate()`` can block forever here: on the inqueue lock an
    idle worker held when it was killed, on the outqueue lock a worker held
    when it died mid-send, or on a pipe nobody reads any more. So: stop the
    worker handler (no more replacements), kill and reap every worker, then
    unblock each of Pool's threads in turn.

    Args:
        pool: The Pool.
        workers: Every worker the Pool created; read once the worker
            handler has stopped, so that a replacement it started just
            before is killed too.
    """
    deadline = time.monotonic() + DISMANTLE_SECONDS
    _, task_handler, result_handler = pool.handler_threads
    stop_replacing(pool, deadline)

    processes = workers()
    for process in processes:
        _kill_process(process)
    for process in processes:
        _join_process(process, _remaining(deadline))

    # The task handler ends on this sentinel (the worker handler sends one
    # too unless it died); then it writes a sentinel to the outqueue and one
    # per worker to the inqueue.
    pool._taskqueue.put(None)
    _unstick(pool._outqueue._wlock)
    _drain_until_dead(pool._inqueue._reader, task_handler, deadline)
    if not task_handler.is_alive():
        # No thread writes to the outqueue any more: closing our end gives
        # the result handler EOF, even mid-message.
        pool._outqueue._writer.close()
    result_handler.join(_remaining(deadline))


def release_pool(pool: WatchedPoolMixin, processes: list[BaseProcess]) -> None:
    # Never run Pool's own finalizer at exit: terminate() can block.
    pool._terminate.cancel()
    pool._state = multiprocessing.pool.TERMINATE
    if any(t.is_alive() for t in pool.handler_threads):  # pragma: no cover
        _log.warning("executors: a Pool thread did not stop; leaving its pipes")
        return
    for queue in (pool._inqueue, pool._outqueue, pool._change_notifier):
        queue.close()
    # Results that never came (a broken pool) hold their callbacks.
    pool._cache.clear()
    for process in processes:
        if not _is_alive(process):
            with contextlib.suppress(ValueError):
                process.close()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _join_process(process: BaseProcess, timeout: float) -> None:
    with contextlib.suppress(ValueError):  # closed
        if process.pid is not None:  # started
            process.join(timeout)


def signal_process(process: BaseProcess, sig: signal.Signals) -> None:
    # Closed, not started, or already gone.
    with contextlib.suppress(ValueError, OSError):
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, sig)


def _kill_process(process: BaseProcess) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed, or already gone
        if process.pid is not None and process.exitcode is None:
            process.kill()


def _is_alive(process: BaseProcess) -> bool:
    try:
        return process.is_alive()
    except ValueError:  # closed, or never started
        return False


def _unstick(lock: Any) -> None:
    """Release ``lock`` if a dead worker left it held (every worker is dead)."""
    if lock is None:  # Windows: message pipes need no lock
        return
    if lock.acquire(timeout=0.5):
        lock.release()
        return
    with contextlib.suppress(ValueError):
        lock.release()


def _drain_until_dead(
    reader: Connection, thread: threading.Thread, deadline: float
) -> None:
    """Read and discard raw bytes from ``reader`` until ``thread`` ends.

    Raw bytes, not messages: a worker killed while reading a large task
    leaves the stream mid-message, and a message-level read could then wait
    forever for bytes that never come.
    """
    if sys.platform == "win32":  # pragma: no cover
        # No SIGPIPE there: with its last reader closed, a write fails.
        reader.close()
        return
    fd = reader.fileno()
    while thread.is_alive() and time.monotonic() < deadline:
        if not wait([reader], 0.05):
            continue
        try:
            if not os.read(fd, 1 << 16):
                return
        except OSError:
            return
