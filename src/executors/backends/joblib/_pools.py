"""The three kinds of workers an executor can own, behind one small interface.

Each hands one call at a time to its library (``launch``), settles it
through the executor's :class:`~executors._callqueue.CallQueue`, and knows
how to let its workers go once the work has drained (``release``), wait for
them (``wait``), stop them at once (``kill``, Ctrl-C) and signal them
(``signal``, ``terminate_workers()``).

None of them holds the executor, and the call queue only weakly: an
executor dropped without ``shutdown()`` is garbage-collected at once, which
closes its queue and lets its workers go (see ``_executor``).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing.context
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from joblib._parallel_backends import ParallelBackendBase
from joblib.externals.loky.backend import get_context as loky_get_context
from joblib.externals.loky.backend.utils import kill_process_tree
from joblib.externals.loky.process_executor import (
    ProcessPoolExecutor as LokyProcessPoolExecutor,
)

from ..._callqueue import Call, CallQueue
from ..._errors import ExecutorFailedError
from ..._lifecycle import join_unless_current
from ..._options import cpu_count
from ..._outcome import Outcome, WorkerBootstrap, decode, run_call
from ..._poolwatch import MakeError, PoolWatch, WatchedPool
from ._translate import is_breaking, translate_error
from ._trip import Memmapping

__all__ = ["LokyWorkers", "MpWorkers", "ThreadWorkers", "Workers", "loky_context"]

# Bound on waiting for process workers to boot before the first timed task:
# a pool that cannot start fails that task anyway.
BOOT_SECONDS = 60.0


class Workers:
    """What every kind of worker offers the executor (threads: see below)."""

    #: loky's pool, for joblib's ``Parallel`` (it reads its temporary folders).
    pool: Any = None
    memmapping: Memmapping | None = None

    def __init__(self) -> None:
        self._calls: weakref.ref[CallQueue] | None = None
        # Set when the executor stops its workers on purpose: what the
        # library then reports for its tasks is no crash.
        self.stopping = False
        # Set when terminate_workers()/kill_workers() begins.
        self.ending = False
        #: Called once after the workers were released (see ``idle``).
        self.after_release: Callable[[], object] | None = None

    def attach(self, calls: CallQueue) -> None:
        self._calls = weakref.ref(calls)

    def idle(self) -> None:
        """The call queue's ``on_idle``: closed, and every call settled."""
        self.release()
        after, self.after_release = self.after_release, None
        if after is not None:
            after()

    def calls(self) -> CallQueue | None:
        return None if self._calls is None else self._calls()

    def payload(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.memmapping is None:
            return fn, args, kwargs
        return self.memmapping.payload(fn, args, kwargs)

    def settle_outcome(self, calls: CallQueue, call: Call, outcome: Outcome) -> None:
        ok, value = decode(outcome)
        if ok:
            calls.settle(call, value)
        else:
            calls.settle(call, error=value)

    def failed(self, calls: CallQueue, call: Call, error: BaseException) -> None:
        """The library failed ``call`` (not the task): translate, maybe break."""
        translated = translate_error(error, call.payload)
        if is_breaking(translated) and not self.stopping:
            # Every unsettled future fails, each with its own instance.
            calls.break_(functools.partial(translate_error, error))
        calls.settle(call, error=translated)

    def broken_error(self) -> BaseException | None:
        return None

    def launch(self, call: Call) -> None:
        raise NotImplementedError

    def boot(self) -> None:
        """Wait until the workers have started (bounded)."""

    def release(self) -> None:
        """The work has drained: let the workers go (never blocks)."""

    def wait(self) -> None:
        """Block until the workers are gone (after :meth:`release` or kill)."""

    def kill(self) -> None:
        """Stop every worker now (Ctrl-C)."""

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process."""


# -- loky ----------------------------------------------------------------------


class _LokyPool(LokyProcessPoolExecutor):  # type: ignore[misc]
    """A loky pool with the attribute joblib's ``Parallel`` expects of one.

    ``Parallel`` reaches ``backend._workers._temp_folder_manager`` to point
    the memmapping reducer at its own temporary folder; joblib sets the same
    attribute on the executors it creates.
    """

    _temp_folder_manager: Any = None


def thread_limits(workers: int, inner_max_num_threads: int | None) -> dict[str, str]:
    """Environment for loky workers: joblib's guard against oversubscription.

    Each worker's BLAS/OpenMP pools get ``cpus // workers`` threads unless
    the variable is already set, exactly as joblib's loky backend does.
    """
    default = max(cpu_count() // workers, 1)
    env = {}
    for var in ParallelBackendBase.MAX_NUM_THREADS_VARS:
        if inner_max_num_threads is not None:
            env[var] = str(inner_max_num_threads)
        else:
            env[var] = os.environ.get(var, str(default))
    if ParallelBackendBase.TBB_ENABLE_IPC_VAR not in os.environ:
        env[ParallelBackendBase.TBB_ENABLE_IPC_VAR] = "1"
    return env


def loky_context(value: object) -> multiprocessing.context.BaseContext:
    """Map ``mp_context`` onto a start method loky supports."""
    if value is None:
        # joblib's own default: fork followed by exec, so a worker never
        # inherits the parent's threads and locks, like "spawn".
        return loky_get_context("loky")  # type: ignore[no-any-return]
    if isinstance(value, str):
        if not value:
            raise ValueError("mp_context must not be an empty string")
        if value == "fork":
            raise ValueError(
                "the 'joblib' backend does not support mp_context='fork': loky "
                "workers must not inherit the parent's threads; use 'loky' (the "
                "default), 'spawn' or 'forkserver'"
            )
        try:
            return loky_get_context(value)  # type: ignore[no-any-return]
        except ValueError:
            raise ValueError(
                f"mp_context {value!r} is not a start method loky supports; "
                "choose one of 'loky', 'loky_init_main', 'spawn', 'forkserver'"
            ) from None
    if isinstance(value, multiprocessing.context.BaseContext):
        if value.get_start_method() == "fork":
            raise ValueError(
                "the 'joblib' backend does not support a 'fork' mp_context; "
                "use 'loky' (the default), 'spawn' or 'forkserver'"
            )
        return value
    raise TypeError(
        "mp_context must be None, a start method name or a multiprocessing "
        f"context, got {value!r}"
    )


class LokyWorkers(Workers):
    """A loky pool of this executor's own, configured as joblib configures one."""

    def __init__(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        bootstrap: WorkerBootstrap,
        idle: float | None,
        memmapping: Memmapping,
        inner_max_num_threads: int | None,
    ) -> None:
        super().__init__()
        self.workers = workers
        self.memmapping = memmapping
        # No reducers for loky itself: calls and outcomes reach it as bytes,
        # and the memmapping reducers work inside Payload.
        self.pool = _LokyPool(
            max_workers=workers,
            timeout=idle,
            context=context,
            initializer=bootstrap,
            env=thread_limits(workers, inner_max_num_threads),
        )
        self.pool._temp_folder_manager = memmapping.manager
        self._manager_thread: threading.Thread | None = None

    def launch(self, call: Call) -> None:
        calls = self.calls()
        if calls is None:  # pragma: no cover - the executor is gone
            return
        theirs = self.pool.submit(run_call, call.payload)
        call.handle = theirs
        theirs.add_done_callback(functools.partial(self._done, calls, call))

    def boot(self) -> None:
        # One short task per worker, so that each worker takes one.
        probes = [self.pool.submit(time.sleep, 0.05) for _ in range(self.workers)]
        futures.wait(probes, timeout=BOOT_SECONDS)

    def _done(self, calls: CallQueue, call: Call, theirs: Future[Any]) -> None:
        # In loky's manager thread.
        if theirs.cancelled():
            error: BaseException | None = ExecutorFailedError(
                "loky cancelled a task it had accepted; the executor is shutting down"
            )
        else:
            error = theirs.exception()
        if error is not None:
            self.failed(calls, call, error)
        else:
            self.settle_outcome(calls, call, theirs.result())

    def release(self) -> None:
        self._stop(wait=False)

    def wait(self) -> None:
        self._stop(wait=True)

    def _stop(self, wait: bool) -> None:
        # Remember loky's manager thread: after shutdown(wait=False) loky
        # forgets it, and a later wait must still see the workers exit.
        thread = getattr(self.pool, "_executor_manager_thread", None)
        if thread is not None:
            self._manager_thread = thread
        self.pool.shutdown(wait=wait)
        if not wait:
            return
        # A done-callback may run in that thread; it cannot wait for itself.
        if self._manager_thread is not threading.current_thread():
            join_unless_current(self._manager_thread)
            # It holds loky's call queue, whose pipe would stay open for as
            # long as this (shut down) executor lives.
            self._manager_thread = None
        assert self.memmapping is not None
        self.memmapping.clean()

    # Workers are stopped here, never by loky's shutdown(kill_workers=True):
    # that drops the tasks loky still queues while its manager thread goes
    # on reading their ids, and the thread dies on a KeyError. Workers
    # killed from outside take loky's "broken pool" path, which is clean.

    def kill(self) -> None:
        self.stopping = True
        for process in list((self.pool._processes or {}).values()):
            # With the worker's own children (nested parallelism).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill_process_tree(process)

    def signal(self, sig: signal.Signals) -> None:
        self.stopping = True
        for pid in list(self.pool._processes or ()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


# -- threads ---------------------------------------------------------------------


class ThreadWorkers(Workers):
    """A thread pool of this executor's own; nothing is pickled."""

    def __init__(
        self, workers: int, initializer: Any, initargs: tuple[Any, ...]
    ) -> None:
        super().__init__()
        self._threads = futures.ThreadPoolExecutor(
            workers,
            thread_name_prefix="executors-joblib",
            initializer=initializer,
            initargs=initargs,
        )

    def launch(self, call: Call) -> None:
        calls = self.calls()
        if calls is None:  # pragma: no cover - the executor is gone
            return
        fn, args, kwargs = call.payload
        theirs = self._threads.submit(fn, *args, **kwargs)
        calls.settle_when_done(call, theirs, translate_error)

    def broken_error(self) -> BaseException | None:
        broken = self._threads._broken
        if broken:
            return translate_error(futures.thread.BrokenThreadPool(broken))
        return None

    def release(self) -> None:
        self._threads.shutdown(wait=False)

    def wait(self) -> None:
        self._threads.shutdown(wait=True)

    def kill(self) -> None:
        # Threads cannot be stopped; their queue can.
        self._threads.shutdown(wait=False, cancel_futures=True)


# -- multiprocessing -------------------------------------------------------------


class MpWorkers(Workers):
    """A ``multiprocessing.Pool`` on the shared Pool watch, with memmapping.

    joblib's ``MemmappingPool`` is a ``multiprocessing.Pool`` whose queues
    pickle with the memmapping reducers; here the reducers work inside
    :class:`~._trip.Payload` instead, so the Pool is the project's
    :class:`~executors._poolwatch.WatchedPool`: a dead worker, a failing
    initializer or a dead Pool thread breaks the executor instead of
    hanging it.
    """

    def __init__(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        initializer: Any,
        initargs: tuple[Any, ...],
        per_child: int | None,
        memmapping: Memmapping,
    ) -> None:
        super().__init__()
        self.workers = workers
        self.memmapping = memmapping
        self._watch = PoolWatch("joblib", context)
        try:
            self._pool = WatchedPool(
                processes=workers,
                maxtasksperchild=per_child,
                context=context,
                **self._watch.pool_options(initializer, initargs),
            )
        except BaseException:
            self._watch.discard()
            raise

    def start(self, calls: CallQueue) -> None:
        self.attach(calls)
        self._watch.watch(self._pool, on_broken=functools.partial(self._broken, calls))

    def boot(self) -> None:
        # Pool starts its workers at once; they may still be booting.
        with contextlib.suppress(Exception):
            self._pool.map_async(time.sleep, [0.05] * self.workers).get(BOOT_SECONDS)

    def _broken(self, calls: CallQueue, make_error: MakeError) -> None:
        # In the watch's thread. Workers we signalled on purpose are no crash.
        if not self.stopping:
            calls.break_(make_error)

    def launch(self, call: Call) -> None:
        calls = self.calls()
        if calls is None:  # pragma: no cover - the executor is gone
            return
        try:
            self._pool.apply_async(
                run_call,
                (call.payload,),
                callback=functools.partial(self.settle_outcome, calls, call),
                # Pool's task handler could not pickle the call: the
                # pickler's own error, as on every backend.
                error_callback=functools.partial(calls.settle, call, None),
            )
        except ValueError:
            # "Pool not running": released after shutdown(), or dismantled.
            raise RuntimeError("cannot schedule new futures after shutdown") from None

    def release(self) -> None:
        if self.stopping or self.ending:
            # No graceful close: Ctrl-C, or terminate_workers(), is waiting.
            self._watch.kill()
        else:
            self._watch.close()

    def wait(self) -> None:
        self._watch.wait()
        assert self.memmapping is not None
        self.memmapping.clean()

    def kill(self) -> None:
        self.stopping = True
        self._watch.kill()

    def signal(self, sig: signal.Signals) -> None:
        self.stopping = True
        for process in list(self._pool._pool):
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                if process.pid is not None:
                    os.kill(process.pid, sig)
        self._watch.kill()
