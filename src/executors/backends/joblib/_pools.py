"""The three kinds of workers an executor can own, behind one small interface.

None of them holds the executor: one dropped without ``shutdown()`` is
garbage-collected at once, and :meth:`Workers.abandon` finishes its work.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing.context
import os
import signal
import threading
import time
from concurrent import futures
from concurrent.futures import BrokenExecutor
from typing import Any

from joblib._parallel_backends import LokyBackend
from joblib.externals.loky import process_executor as loky
from joblib.externals.loky.backend.utils import kill_process_tree

from ..._bootstrap import initializer_error
from ..._callqueue import Call, CallQueue
from ..._errors import ExecutorFailedError
from ..._lifecycle import close_at_exit, join_unless_current
from ..._outcome import WorkerBootstrap
from ..._workers import WorkerSettings
from ..._workers._pools import UntilRecycled
from .._mp.pool import WatchedPool
from .._mp.watch import MakeError, PoolWatch
from ._trip import BACKEND, Memmapping, Payload, translate_error
from ._worker import run_on_loky, run_on_pool

__all__ = ["LokyWorkers", "MemmapOptions", "MpWorkers", "ThreadWorkers", "Workers"]

#: ``max_nbytes``, ``mmap_mode`` and ``temp_folder``, checked.
MemmapOptions = tuple[int | None, str | None, str | None]

# Bound on waiting for process workers to boot before the first timed task:
# a pool that cannot start fails that task anyway.
BOOT_SECONDS = 60.0

# Workers (and their call queue) of collected executors, until drained.
_abandoned: set[Workers] = set()


class Workers:
    """What every kind of worker offers the executor and its call queue."""

    #: loky's pool, for joblib's ``Parallel`` (it reads its temporary folders).
    pool: Any = None
    memmapping: Memmapping | None = None
    calls: CallQueue
    #: Buffers of at least this many bytes travel through shared memory,
    #: both ways (process workers only; set by the executor).
    shm_threshold: int | None = None
    #: The process workers' options of issue 26: its listener ends with them.
    settings: WorkerSettings | None = None

    @property
    def reply(self) -> tuple[Any, ...]:
        """The worker function's extra arguments: how results come back."""
        return () if self.shm_threshold is None else (self.shm_threshold,)

    def __init__(self) -> None:
        # Set when the executor stops its workers on purpose: what the
        # library then reports for its tasks is no crash.
        self.stopping = False

    def attach(self, calls: CallQueue) -> None:
        self.calls = calls

    def runs_in_current_thread(self) -> bool:
        """True when called from one of the workers (threads only)."""
        return False

    def idle(self) -> None:
        """The call queue's ``on_idle``: closed, and every call settled."""
        self.release()
        _abandoned.discard(self)

    def abandon(self) -> None:
        """The executor was collected without ``shutdown()``: finish its work.

        Queued calls still run, and interpreter exit waits for them, as with
        the stdlib pools.
        """
        _abandoned.add(self)
        close_at_exit(self)
        self.calls.close()
        if self.calls.is_idle():  # drained already: nothing to keep
            _abandoned.discard(self)

    def close_at_exit(self) -> None:
        self.calls.wait_idle()
        self.wait()

    def payload(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.memmapping is None:
            return fn, args, kwargs
        return Payload((fn, args, kwargs), self.memmapping, self.shm_threshold)

    def failed(self, call: Call, error: BaseException) -> None:
        """The library failed ``call`` (not the task): translate, maybe break."""
        translated = translate_error(error, call.payload)
        # A dead worker or a failed initializer breaks the pool for good:
        # every unsettled future fails, each with its own instance.
        if isinstance(translated, BrokenExecutor) and not self.stopping:
            self.calls.break_(functools.partial(translate_error, error))
        self.calls.settle(call, error=translated)

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

    def close_settings(self, wait: bool) -> None:
        """The workers are going (or gone, with ``wait``): end the listener.

        Without ``wait`` it ends once the leaving workers sent their last
        records (their finalizers' among them).
        """
        if self.settings is not None:
            self.settings.close(wait)

    def kill(self) -> None:
        """Stop every worker now (Ctrl-C)."""

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker process."""


class LokyWorkers(Workers):
    """A loky pool of this executor's own, configured as joblib configures one.

    Never stopped by loky's ``shutdown(kill_workers=True)``: it drops queued
    tasks whose ids loky's manager thread still reads, and the thread dies
    on a ``KeyError``. Workers killed from outside take a clean path.
    """

    def __init__(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        bootstrap: WorkerBootstrap,
        idle: float | None,
        inner_max_num_threads: int | None,
        memmap: MemmapOptions,
    ) -> None:
        super().__init__()
        self.workers = workers
        # loky's workers run loky's resource tracker, which deletes a map's
        # file once no worker uses it.
        self.memmapping = Memmapping(*memmap, unlink_on_gc_collect=True)
        # Calls and outcomes reach loky as bytes, so it needs no reducers;
        # the environment is joblib's guard against oversubscription, set
        # before a worker imports anything (threads_per_worker=None: none).
        env = None
        if inner_max_num_threads is not None:
            env = LokyBackend(
                inner_max_num_threads=inner_max_num_threads
            )._prepare_worker_env(workers)
        self.pool = loky.ProcessPoolExecutor(
            max_workers=workers,
            timeout=idle,
            context=context,
            initializer=bootstrap,
            env=env,
        )
        # Parallel reads backend._workers._temp_folder_manager, which joblib
        # sets on the executors it creates, to find a call's folder.
        self.pool._temp_folder_manager = self.memmapping.manager
        self._manager_thread: threading.Thread | None = None
        # Every worker pid seen, until it is reaped.
        self._known: set[int] = set()

    def launch(self, call: Call) -> None:
        theirs = self.pool.submit(run_on_loky, call.payload, *self.reply)
        # The workers loky started for it, before its manager thread can
        # take them out of its table (see signal()).
        self._known.update(self.pool._processes or ())
        if len(self._known) > 4 * self.workers:  # recycled workers: forget
            self._known = {pid for pid in self._known if _unreaped(pid)}
        # Settled in loky's manager thread.
        self.calls.settle_when_done(
            call, theirs, outcome=True, dropped=_dropped_by_loky, failed=self.failed
        )

    def boot(self) -> None:
        # One short task per worker, so that each worker takes one.
        probes = [self.pool.submit(time.sleep, 0.05) for _ in range(self.workers)]
        futures.wait(probes, timeout=BOOT_SECONDS)

    def release(self) -> None:
        self.wait(block=False)

    def wait(self, block: bool = True) -> None:
        # Remember loky's manager thread: after shutdown(wait=False) loky
        # forgets it, and a later wait must still see the workers exit.
        thread = getattr(self.pool, "_executor_manager_thread", None)
        self._manager_thread = thread or self._manager_thread
        self._known.update(self.pool._processes or ())
        self.pool.shutdown(wait=block)
        if not block:
            self.close_settings(wait=False)
            return
        # A done-callback may run in that thread; it cannot wait for itself.
        if self._manager_thread is not threading.current_thread():
            join_unless_current(self._manager_thread)
            # It holds loky's call queue, whose pipe would stay open for as
            # long as this (shut down) executor lives.
            self._manager_thread = None
        assert self.memmapping is not None
        self.memmapping.clean()
        self.close_settings(wait=True)

    def kill(self) -> None:
        self.stopping = True
        for process in list((self.pool._processes or {}).values()):
            # With the worker's own children (nested parallelism).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill_process_tree(process)

    def signal(self, sig: signal.Signals) -> None:
        self.stopping = True
        # loky's manager thread takes each worker out of _processes before
        # it joins it, even before this is called (a shutdown under way): a
        # SIGKILL after the grace must still reach a worker that ignored
        # the SIGTERM. Only a child not yet reaped is signalled: a reaped
        # one's pid may belong to another process by now.
        self._known.update(self.pool._processes or ())
        for pid in list(self._known):
            if not _unreaped(pid):
                self._known.discard(pid)
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _dropped_by_loky() -> ExecutorFailedError:
    return ExecutorFailedError(
        "loky cancelled a task it had accepted; the executor is shutting down"
    )


def _unreaped(pid: int) -> bool:
    """Whether ``pid`` is a child of ours not yet reaped (its pid still its own)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


class ThreadWorkers(Workers):
    """A thread pool of this executor's own; nothing is pickled."""

    def __init__(
        self, workers: int, initializer: Any, initargs: tuple[Any, ...]
    ) -> None:
        super().__init__()
        # The stdlib logs a failing initializer's exception and breaks the
        # pool with a message of its own: keep the exception for the error.
        self._init_error: BaseException | None = None
        self._threads = futures.ThreadPoolExecutor(
            workers,
            thread_name_prefix="executors-joblib",
            initializer=None if initializer is None else self._initialize,
            initargs=(initializer, *initargs),
        )

    def _initialize(self, initializer: Any, *initargs: Any) -> None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            self._init_error = exc
            raise

    def launch(self, call: Call) -> None:
        # Checked here, not by the pool's submit(): when an initializer
        # fails, the pool fails its queued futures holding the lock submit()
        # takes, and this runs from their callbacks (it would deadlock).
        broken = self.broken_error()
        if broken is not None:
            raise broken
        fn, args, kwargs = call.payload
        theirs = self._threads.submit(fn, *args, **kwargs)
        self.calls.settle_when_done(call, theirs, self._translate)

    def broken_error(self) -> BaseException | None:
        broken = self._threads._broken
        if broken:
            return self._translate(futures.thread.BrokenThreadPool(broken))
        return None

    def _translate(self, error: BaseException) -> BaseException:
        if isinstance(error, futures.thread.BrokenThreadPool):
            # A thread pool breaks for one reason only: an initializer raised.
            translated = initializer_error(
                BACKEND,
                None,
                str(error),
                cause=self._init_error,
                where="in a thread",
            )
            if self._init_error is None:
                translated.__cause__ = error
            return translated
        return translate_error(error)

    def runs_in_current_thread(self) -> bool:
        return threading.current_thread() in self._threads._threads

    def release(self) -> None:
        self._threads.shutdown(wait=False)

    def wait(self) -> None:
        self._threads.shutdown(wait=True)

    def kill(self) -> None:
        # Threads cannot be stopped; their queue can.
        self._threads.shutdown(wait=False, cancel_futures=True)


class MpWorkers(Workers):
    """A ``multiprocessing.Pool`` on the shared Pool watch, with memmapping.

    The memmapping reducers work in :class:`~._trip.Payload`, not in the
    queues of joblib's ``MemmappingPool``, so the Pool is the project's
    ``WatchedPool``: a dead worker or a failing initializer breaks the
    executor instead of hanging it.
    """

    def __init__(
        self,
        workers: int,
        context: multiprocessing.context.BaseContext,
        initializer: Any,
        initargs: tuple[Any, ...],
        settings: WorkerSettings,
        memmap: MemmapOptions,
    ) -> None:
        super().__init__()
        self.workers = workers
        # Pool's workers run no resource tracker (as in joblib's own pool).
        self.memmapping = Memmapping(*memmap, unlink_on_gc_collect=False)
        self._watch = PoolWatch("joblib", context)
        recycles = settings.max_tasks is not None or settings.max_memory is not None
        try:
            self._pool = WatchedPool(
                processes=workers,
                # The spec counts tasks and memory (as on mp_pool); Pool's
                # loop ends after the task that made the worker leave.
                maxtasksperchild=UntilRecycled() if recycles else None,
                context=context,
                **self._watch.pool_options(
                    initializer, initargs, None, settings.spec()
                ),
            )
        except BaseException:
            self._watch.discard()
            settings.close(wait=False)
            raise
        # A worker that will leave soon has its replacement started now.
        settings.on_leaving = self._pool.request_spare
        self.settings = settings

    def attach(self, calls: CallQueue) -> None:
        super().attach(calls)
        self._watch.watch(self._pool, on_broken=self._broken)

    def boot(self) -> None:
        # Pool starts its workers at once; they may still be booting.
        with contextlib.suppress(Exception):
            self._pool.map_async(time.sleep, [0.05] * self.workers).get(BOOT_SECONDS)

    def _broken(self, make_error: MakeError) -> None:
        # In the watch's thread. Workers we signalled on purpose are no crash.
        if not self.stopping:
            self.calls.break_(make_error)

    def launch(self, call: Call) -> None:
        try:
            self._pool.apply_async(
                run_on_pool,
                (call.payload, *self.reply),
                callback=functools.partial(self.calls.settle_outcome, call),
                # Pool's task handler could not pickle the call: the
                # pickler's own error, as on every backend.
                error_callback=functools.partial(self.calls.settle, call, None),
            )
        except ValueError:
            # "Pool not running": released after shutdown(), or dismantled.
            raise RuntimeError("cannot schedule new futures after shutdown") from None

    def release(self) -> None:
        if self.stopping or self.calls.ending:
            # No graceful close: Ctrl-C, or terminate_workers(), is waiting.
            self._watch.kill()
        else:
            self._watch.close()
        self.close_settings(wait=False)

    def wait(self) -> None:
        self._watch.wait()
        assert self.memmapping is not None
        self.memmapping.clean()
        self.close_settings(wait=True)

    def kill(self) -> None:
        self.stopping = True
        self._watch.kill()

    def signal(self, sig: signal.Signals) -> None:
        # The watch stops Pool replacing the workers, then dismantles it.
        self.stopping = True
        self._watch.terminate(sig)
