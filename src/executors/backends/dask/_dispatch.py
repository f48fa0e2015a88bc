"""Calls on their way to Dask and back: :class:`Dispatch` and :class:`Manager`.

``launch`` (from the :class:`~executors._callqueue.CallQueue`, in the thread
that submitted or settled last) hands one call to ``client.submit``; a
coroutine on the client's event loop waits for it and posts its outcome,
still as bytes, to the events queue; the manager thread decodes it and
settles the call through the queue, which launches the next one. User
callbacks and result unpickling never run on the event loop (with a local
cluster the scheduler runs on it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

from distributed import KilledWorker

from ..._callqueue import Call, CallQueue
from ..._errors import DaskClusterError, WorkerCrashedError, describe_exitcode
from ..._lifecycle import (
    ManagerThread,
    close_at_exit,
    ending_on_keyboard_interrupt,
    join_unless_current,
    manager_failed,
)
from ..._outcome import decode, initializer_error
from ._cluster import Runtime
from ._worker import InitializerFailure, run_task

__all__ = ["Dispatch", "Manager", "translate"]

#: How long a finished task's result may stay on its worker after we have
#: it, waiting to be released together with the next hand-over.
RELEASE_SECONDS = 0.05
#: How often the manager looks for room while calls are in flight: a worker
#: that restarted (after a crash or a timeout) is used within this delay. A
#: remote cluster's thread count is re-read at most every 0.5 s meanwhile.
POLL_SECONDS = 0.1

#: Chunks of a map handed to Dask per worker thread (see chunk_window).
CHUNKS_PER_THREAD = 2

_STOP = ("stop",)
_WAKE = ("wake",)


class Dispatch:
    """Hands calls to Dask and follows them on the client's event loop.

    Holds neither the executor nor its futures beyond the calls in flight,
    so an executor dropped without ``shutdown()`` is still collected.

    Args:
        default_window: Calls in flight before the cluster is up.
    """

    def __init__(self, default_window: int) -> None:
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.runtime: Runtime | None = None
        self.capacity: Callable[[], int] = lambda: default_window
        self.calls: CallQueue  # set by the executor right after
        # Guards everything below; held briefly, never across an await.
        self.lock = threading.Lock()
        self.in_flight: dict[str, tuple[Call, Any]] = {}
        # Dask futures whose results we hold: dropping one sends a release
        # to the scheduler, and Dask's client sends at most one batch of
        # messages per 10 ms. Released together with the next hand-over
        # (or a little later), a release never holds back a submit.
        self.spent: list[Any] = []
        self.flush_scheduled = False
        self.manager: Manager | None = None
        self.followers: set[asyncio.Future[None]] = set()

    def attach(self, runtime: Runtime, capacity: Callable[[], int]) -> None:
        self.runtime = runtime
        self.capacity = capacity

    def window(self) -> int:
        """Calls Dask may hold: its worker threads, at least one.

        At least one, so that queued calls always have one in flight whose
        settling launches them, even while every worker restarts.
        """
        return max(1, self.capacity())

    def chunk_window(self) -> int:
        """Chunks of a map Dask may hold: two per worker thread.

        A worker then starts its next chunk the moment one ends, instead of
        waiting for the result to reach us and the next chunk to reach it.
        The price: a chunk that kills its worker makes the chunk queued
        behind it "suspicious" too (Dask retries it; see allowed_failures).
        """
        return CHUNKS_PER_THREAD * self.window()

    def launch(self, call: Call) -> None:
        """Hand one call to Dask (the CallQueue's ``launch``)."""
        runtime = self.runtime
        assert runtime is not None, "launched before the cluster started"
        payload, label = call.payload
        key = f"{label}-{uuid.uuid4().hex}"
        try:
            dask_future = runtime.client.submit(
                run_task, payload, runtime.plugin, key=key, pure=False
            )
        except Exception as exc:
            # Dask refused the task (its client is closed): nothing more
            # will run.
            refusal = exc
            self.calls.break_(lambda: translate(refusal))
            self.events.put(_WAKE)  # the manager ends on a broken queue
            raise
        call.handle = key
        with self.lock:
            self.in_flight[key] = (call, dask_future)
            spent, self.spent = self.spent, []
        self._watch(key, dask_future)
        # Released after the submit above, in the same batch.
        del spent

    def _watch(self, key: str, dask_future: Any) -> None:
        loop = self.runtime.client.loop  # type: ignore[union-attr]
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.add_callback(self._start_following, key, dask_future)

    def _start_following(self, key: str, dask_future: Any) -> None:
        # asyncio keeps only weak references to tasks.
        follower = asyncio.ensure_future(self._follow(key, dask_future))
        self.followers.add(follower)
        follower.add_done_callback(self.followers.discard)

    async def _follow(self, key: str, dask_future: Any) -> None:
        """On the loop: wait for one task, post its outcome to the manager."""
        data = exc = None
        try:
            client = self.runtime.client  # type: ignore[union-attr]
            (data,) = await client.gather([dask_future], asynchronous=True)
        except BaseException as error:  # KilledWorker, a lost scheduler ...
            exc = error
        with self.lock:
            entry = self.in_flight.pop(key, None)
            self.spent.append(dask_future)
            flush = not self.flush_scheduled
            self.flush_scheduled = True
        if entry is not None:  # else stopped, or dropped at shutdown
            self.events.put(("done", entry[0], data, exc))
        if flush:
            self.runtime.client.loop.call_later(  # type: ignore[union-attr]
                RELEASE_SECONDS, self._flush
            )

    def _flush(self) -> None:
        with self.lock:
            spent, self.spent = self.spent, []
            self.flush_scheduled = False
        del spent

    def stop(self, call: Call) -> bool:
        """Stop a launched call's task (the CallQueue's ``stop``).

        Local cluster: its worker is killed, and the key released first so
        that Dask does not run it again elsewhere. A remote cluster's
        workers cannot be reached: False, the task is abandoned.
        """
        runtime = self.runtime
        if runtime is None or runtime.cluster is None:
            return False
        with self.lock:
            entry = self.in_flight.pop(call.handle, None)
        if entry is None:
            return False  # its outcome is on the way already
        return runtime.stop_task(call.handle)

    def wake(self) -> None:
        """Have the manager look for room soon: a call waits in the queue."""
        self.events.put(_WAKE)

    def abandon(self, pid: int) -> None:
        """The executor was collected without ``shutdown()``.

        The queued work runs, then the manager closes the client and
        cluster; interpreter exit still waits for it. Not in a forked
        child, which may have inherited a lock held.
        """
        if os.getpid() != pid:
            return
        self.calls.close()
        if self.manager is not None:
            close_at_exit(self.manager)

    def finish(self) -> None:
        """Tell the manager to close up (the CallQueue's ``on_idle``)."""
        self.events.put(_STOP)

    def drop_all(self) -> None:
        """Forget every call in flight and ask Dask to cancel them."""
        with self.lock:
            dask_futures = [future for _, future in self.in_flight.values()]
            self.in_flight.clear()
            self.spent.clear()
        if dask_futures and self.runtime is not None:
            with contextlib.suppress(Exception):
                self.runtime.client.cancel(dask_futures)


class Manager(ManagerThread):
    """Settles calls as their outcomes arrive; closes the runtime at the end.

    It ends when told (:meth:`stop`, once the call queue is closed and
    idle) or when the queue breaks, closing the client and cluster it was
    given. It holds no reference to the executor.

    Args:
        dispatch: The calls in flight and the events queue.
        runtime: What to close at the end.
        refresh: Re-reads a remote cluster's thread count, or ``None``.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        runtime: Runtime,
        refresh: Callable[[], int] | None,
    ) -> None:
        super().__init__("executors-dask-manager")
        self.dispatch = dispatch
        self.calls = dispatch.calls
        self.runtime = runtime
        self.refresh = refresh

    def loop(self) -> None:
        events = self.dispatch.events
        try:
            while not self.calls.is_broken:
                busy = not self.calls.is_idle()
                try:
                    event = events.get(timeout=POLL_SECONDS if busy else None)
                except queue.Empty:
                    self._look_for_room()
                    continue
                if event is _STOP:
                    return
                if event[0] == "done":
                    self._settle(*event[1:])
        finally:
            self.dispatch.drop_all()
            self.runtime.close()

    def _look_for_room(self) -> None:
        # Workers that restarted came back, or a remote cluster grew: the
        # window is larger now, but only a settle would launch more.
        if self.refresh is not None:
            self.refresh()
        if len(self.calls.launched()) < self.dispatch.window():
            # CallQueue has no public "launch what fits now" (reported).
            self.calls.pump()

    def interrupt(self) -> None:
        """Ctrl-C: cancel the queued calls, fail the running ones, stop now.

        On the local cluster the workers are stopped at close without
        waiting for their tasks.
        """
        self.runtime.interrupted = True
        if self.runtime.cluster is not None:
            fate = "its worker is being stopped"
        else:
            fate = "Dask cannot stop it, so it may still run on the cluster"
        message = (
            "the 'dask' executor was interrupted (KeyboardInterrupt) while "
            f"the task ran; {fate}"
        )
        self.calls.close(cancel_futures=True)
        self.calls.fail_launched(lambda: DaskClusterError(message))

    def close_at_exit(self) -> None:
        """At exit, for an executor dropped without ``shutdown()``.

        Its queue was closed when it was collected: finish the work, or
        stop it on Ctrl-C, as the executor itself would.
        """
        if not ending_on_keyboard_interrupt():
            try:
                self.calls.wait_idle()
                join_unless_current(self)
                return
            except KeyboardInterrupt:
                pass
        self.interrupt()
        join_unless_current(self)

    def on_failure(self, error: BaseException) -> None:
        self.calls.break_(manager_failed("dask", "manager", error))

    def _settle(self, call: Call, data: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.calls.settle(call, error=translate(exc))
        elif isinstance(data, InitializerFailure):
            failure = data
            self.calls.break_(
                lambda: initializer_error("dask", failure.pid, failure.summary)
            )
        else:
            ok, value = decode(data)
            if ok:
                self.calls.settle(call, value)
            else:
                self.calls.settle(call, error=value)


def _crash_error(exc: KilledWorker) -> WorkerCrashedError:
    attempts = exc.allowed_failures + 1
    worker = getattr(exc.last_worker, "address", "an unknown worker")
    error = WorkerCrashedError(
        f"the Dask workers running this task died {attempts} time(s) "
        f"(the scheduler allows {exc.allowed_failures} retries); the last was "
        f"{worker}. Dask does not report a worker's exit code to clients "
        f"({describe_exitcode(None)}): the worker or nanny log says whether it "
        "exited, segfaulted or was killed (SIGKILL is also what the OOM killer "
        "and the nanny's memory limit send)."
    )
    error.__cause__ = exc
    return error


def translate(exc: BaseException) -> BaseException:
    """Turn a failure of Dask's machinery into our exception family.

    The one boundary where Dask's errors are translated: a task's own
    exception never gets here (the worker sends it back as bytes).
    """
    if isinstance(exc, KilledWorker):
        return _crash_error(exc)
    error = DaskClusterError(f"the Dask cluster did not run the task: {exc!r}")
    error.__cause__ = exc
    return error
