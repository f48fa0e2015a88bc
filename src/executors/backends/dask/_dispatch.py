"""Calls on their way to Dask and back, the caller's end: :class:`Dispatch`.

Drawn in docs/backends/dask.md. The worker's end, which our workers import
as their Dask preload, is :mod:`._worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

from distributed import KilledWorker

from ..._callqueue import Call, CallQueue
from ..._errors import (
    DaskClusterError,
    ExecutorInterruptedError,
    WorkerCrashedError,
    describe_exitcode,
)
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

__all__ = ["Dispatch", "translate"]

#: How long a result we have may wait on its worker to be released with
#: the next hand-over (Dask's client sends one batch per 10 ms at most).
RELEASE_SECONDS = 0.05
#: How often the manager looks for room (a restarted worker) while calls run.
POLL_SECONDS = 0.1
#: Chunks of a map per worker thread: the next starts the moment one ends.
CHUNKS_PER_THREAD = 2

_STOP = ("stop",)
_WAKE = ("wake",)


class Dispatch(ManagerThread):
    """Hands calls to Dask, follows them, settles them in its own thread.

    The thread closes the runtime once the queue is closed and idle, or
    broken. No reference to the executor: a dropped one is still collected.
    """

    def __init__(self, default_window: int) -> None:
        super().__init__("executors-dask-manager")
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.capacity: Callable[[], int] = lambda: default_window
        self.runtime: Runtime  # set by attach(), before the first launch
        self.calls: CallQueue  # set by the executor right after
        # Guards everything below; held briefly, never across an await.
        self.lock = threading.Lock()
        self.in_flight: dict[str, tuple[Call, Any]] = {}
        # Dask futures whose results we hold (see RELEASE_SECONDS).
        self.spent: list[Any] = []
        self.flush_scheduled = False
        self.followers: set[asyncio.Future[None]] = set()

    def attach(self, runtime: Runtime, max_in_flight: int | None) -> None:
        """Launch on ``runtime``; Dask holds ``max_in_flight`` or its threads."""
        self.runtime = runtime
        if max_in_flight is not None:
            self.capacity = lambda: max_in_flight
        elif runtime.cluster is not None:
            # Live and free to read: the scheduler runs in this process.
            scheduler = runtime.cluster.scheduler
            self.capacity = lambda: int(scheduler.total_nthreads)
        else:
            # The last count (refreshed by this thread while calls run): the
            # queue's lock must not wait on the scheduler.
            runtime.thread_count()
            self.capacity = lambda: runtime.threads

    def window(self) -> int:
        if self.runtime.client.status != "running":
            # The client is reconnecting to a lost scheduler: Dask loses a
            # task submitted meanwhile, even if it reconnects. The poll
            # (_look_for_room) launches the queued calls once it runs again.
            return 0
        # At least one, so that queued calls always have one in flight whose
        # settling launches them, even while every worker restarts.
        return max(1, self.capacity())

    def chunk_window(self) -> int:
        return CHUNKS_PER_THREAD * self.window()

    def launch(self, call: Call) -> None:
        """Hand one call to Dask (the CallQueue's ``launch``)."""
        runtime = self.runtime
        payload, label, shared = call.payload
        key = f"{label}-{uuid.uuid4().hex}"
        try:
            dask_future = runtime.client.submit(
                run_task, payload, runtime.plugin, *shared, key=key, pure=False
            )
        except Exception as exc:  # the client is closed: nothing more runs
            self.calls.break_(functools.partial(translate, exc))
            self.events.put(_WAKE)  # the manager ends on a broken queue
            raise
        call.handle = key
        with self.lock:
            self.in_flight[key] = (call, dask_future)
            spent, self.spent = self.spent, []
        with contextlib.suppress(RuntimeError):  # the loop is closing
            runtime.client.loop.add_callback(self._start_following, key, dask_future)
        # Released after the submit above, in the same batch.
        del spent

    def _start_following(self, key: str, dask_future: Any) -> None:
        # asyncio keeps only weak references to tasks.
        follower = asyncio.ensure_future(self._follow(key, dask_future))
        self.followers.add(follower)
        follower.add_done_callback(self.followers.discard)

    async def _follow(self, key: str, dask_future: Any) -> None:
        """On the loop: wait for one task, post its outcome to the manager."""
        data = exc = None
        client = self.runtime.client
        try:
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
            client.loop.call_later(RELEASE_SECONDS, self._flush)

    def _flush(self) -> None:
        with self.lock:
            spent, self.spent = self.spent, []
            self.flush_scheduled = False
        del spent

    def stop_call(self, call: Call) -> bool:
        """The CallQueue's ``stop``: False on a remote cluster (abandoned)."""
        if self.runtime.cluster is None:
            return False
        with self.lock:
            entry = self.in_flight.pop(call.handle, None)
        if entry is None:
            return False  # its outcome is on the way already
        return self.runtime.stop_task(call.handle)

    def wake(self) -> None:
        """Have the manager look for room soon: a call waits in the queue."""
        self.events.put(_WAKE)

    def finish(self) -> None:
        """Tell the manager to close up (the CallQueue's ``on_idle``)."""
        self.events.put(_STOP)

    def abandon(self) -> None:
        """The executor was collected: run the queued work, then close up."""
        self.calls.close()
        if self.ident is not None:
            close_at_exit(self)

    def close_at_exit(self) -> None:
        """At exit, after :meth:`abandon`: as ``BaseExecutor.close_at_exit``."""
        if not ending_on_keyboard_interrupt():
            try:
                self.calls.wait_idle()
                join_unless_current(self)
                return
            except KeyboardInterrupt:
                pass
        self.interrupt()
        join_unless_current(self)

    def interrupt(self) -> None:
        """Ctrl-C: cancel queued calls, fail running ones, stop the workers."""
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
        self.calls.fail_launched(lambda: ExecutorInterruptedError(message))

    def loop(self) -> None:
        try:
            while not self.calls.is_broken:
                busy = not self.calls.is_idle()
                try:
                    event = self.events.get(timeout=POLL_SECONDS if busy else None)
                except queue.Empty:
                    self._look_for_room()
                    continue
                if event is _STOP:
                    return
                if event[0] == "done":
                    self._settle(*event[1:])
                # The event holds the call, and through its future the
                # result: kept until the next event (the last result of a
                # map until shutdown), after the caller has dropped it.
                del event
        finally:
            self._drop_all()
            self.runtime.close()

    def on_failure(self, error: BaseException) -> None:
        self.calls.break_(manager_failed("dask", "manager", error))

    def _look_for_room(self) -> None:
        if self.runtime.client.status in ("closing", "closed"):
            # Dask gave up reconnecting to a lost scheduler: its futures,
            # ours included, will never finish.
            self.calls.break_(self.runtime.lost_scheduler)
            return
        # Workers came back, or a remote cluster grew: the window is larger
        # now, but only a settle would launch more.
        if self.runtime.cluster is None:
            self.runtime.thread_count()
        self.calls.pump()

    def _settle(self, call: Call, data: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.calls.settle(call, error=translate(exc))
        elif isinstance(data, InitializerFailure):
            self.calls.break_(
                functools.partial(initializer_error, "dask", data.pid, data.summary)
            )
        else:
            ok, value = decode(data)
            if ok:
                self.calls.settle(call, value)
            else:
                self.calls.settle(call, error=value)

    def _drop_all(self) -> None:
        with self.lock:
            dask_futures = [future for _, future in self.in_flight.values()]
            self.in_flight.clear()
            self.spent.clear()
        if dask_futures:
            with contextlib.suppress(Exception):
                self.runtime.client.cancel(dask_futures)


def translate(exc: BaseException) -> BaseException:
    """Turn a failure of Dask's machinery (not a task's own error) into ours."""
    error: BaseException
    if isinstance(exc, KilledWorker):
        attempts = exc.allowed_failures + 1
        worker = getattr(exc.last_worker, "address", "an unknown worker")
        error = WorkerCrashedError(
            f"the Dask workers running this task died {attempts} time(s) "
            f"(the scheduler allows {exc.allowed_failures} retries); the last "
            f"was {worker}. Dask does not report a worker's exit code to "
            f"clients ({describe_exitcode(None)}): the worker or nanny log says "
            "whether it exited, segfaulted or was killed (SIGKILL is also what "
            "the OOM killer and the nanny's memory limit send)."
        )
    else:
        error = DaskClusterError(f"the Dask cluster did not run the task: {exc!r}")
    error.__cause__ = exc
    return error
