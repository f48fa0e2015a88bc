"""The manager thread (:class:`Manager`) and its wake-up pipe (:class:`Wakeup`).

See docs/backends/queue.md, "How it works".
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import TYPE_CHECKING, Any

from ..._lifecycle import ManagerThread, manager_failed
from ._items import KillReason, WorkerHandle, find_item, time_limit
from ._polling import PollPolicy, poll_for
from ._wire import BadFrameError

if TYPE_CHECKING:
    from ._pool import QueuePool
    from ._triage import Triage

__all__ = ["Manager", "Wakeup"]

# Bounds how late an item not yet seen to start is stopped (or timed in a rerun).
TIMEOUT_POLL_SECONDS = 0.01
_RESULTS, _EXITED, _WRITABLE = 0, 1, 2


class Wakeup:
    """A pipe other threads write to so the manager's wait returns.

    It holds at most one wake-up, so a writer never blocks (CPython gh-105829).
    A Ctrl-C in :meth:`wake` may leave one more, which ``drain`` empties too;
    ``wake`` marks one pending only once written, so none is lost.
    """

    def __init__(self) -> None:
        import multiprocessing

        self._reader, self._writer = multiprocessing.Pipe(duplex=False)
        self._raw = os.name == "posix"
        if self._raw:
            # Drained with plain reads of whatever is there.
            os.set_blocking(self._reader.fileno(), False)
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False

    @property
    def reader(self) -> Connection:
        return self._reader

    def wake(self) -> None:
        with self._lock:
            if self._pending or self._closed:
                return
            with contextlib.suppress(OSError):
                self._writer.send_bytes(b"")
            self._pending = True

    def drain(self) -> None:
        with self._lock:
            if not self._closed:
                if self._raw:
                    with contextlib.suppress(OSError):
                        while os.read(self._reader.fileno(), 4096):
                            pass
                else:
                    with contextlib.suppress(OSError, EOFError):
                        while self._reader.poll(0):
                            self._reader.recv_bytes()
            self._pending = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()
                self._writer.close()


class Manager(ManagerThread):
    """Waits on every worker's result pipe and exit, and feeds the pool.

    Holds the pool, never the executor, so that the executor stays collectable.
    """

    def __init__(self, pool: QueuePool, triage: Triage) -> None:
        super().__init__(name="executors-queue-manager")
        self.pool = pool
        self.triage = triage
        self.selector = _Selector()
        self.watching: dict[int, WorkerHandle] = {}
        # Workers whose task pipe is watched for room for their outbox.
        self.writing: set[WorkerHandle] = set()
        self.generation = -1
        self.polling = PollPolicy()

    def run(self) -> None:
        try:
            # If the loop raises, on_failure breaks the pool first, so that
            # what is left fails with the pool's error.
            super().run()
        finally:
            with contextlib.suppress(Exception):
                self.selector.close()
            self.pool.stop_workers()

    def loop(self) -> None:
        pool = self.pool
        self.selector.register(pool.wakeup.reader, (None, _RESULTS))
        while not pool.should_stop():
            self._watch_new_workers()
            if pool.unflushed:
                self._watch_outboxes()
            timeout, poll = self._check_deadlines(), self._poll_seconds()
            began = time.monotonic()
            ready = self.selector.select(timeout, poll)
            self.polling.waited(time.monotonic() - began, poll)
            for worker, what in ready:
                if worker is None:
                    pool.wakeup.drain()
                elif worker.gone:
                    continue
                elif what == _EXITED:
                    self._forget(worker)
                    self.triage.on_exit(worker)
                elif what == _WRITABLE:
                    if self._flush(worker):
                        self._stop_writing(worker)
                else:
                    self._read(worker)

    def _poll_seconds(self) -> float:
        """Seconds to poll before sleeping: 0 unless waits are short and a CPU idles.

        Idles: left over by the workers holding a task, and by those that
        poll (or will, after their task) and the callers they serve: the
        caller runs while its worker polls. A polling worker comes first:
        its wake-up is on every round trip too, and costs more.
        """
        polling, pool = self.polling, self.pool
        if not polling.waits_are_short():
            return 0.0  # the common case of long tasks: nothing counted
        # Without the lock: list() copies the values at once, and a count
        # that is already stale costs one poll at most. The count before the
        # CPU wait: a CPU the pool's own work takes says nothing of how
        # crowded the machine is (a map keeps every CPU busy).
        busy = sum(1 for worker in list(pool.workers.values()) if worker.held)
        wanted = busy + 2 * pool.board.polling()
        if wanted < polling.cpus and polling.worth_polling():
            return polling.seconds
        return 0.0

    def _check_deadlines(self) -> float | None:
        """Kill workers whose item is stopped or out of time; when to look again."""
        pool = self.pool
        if pool.watched <= 0:
            return None
        now = time.monotonic_ns()
        wait: float | None = None
        with pool.lock:
            for worker in pool.workers.values():
                if worker.kill_reason is not None or not any(
                    item.watched for item in worker.held
                ):
                    continue
                posted = pool.board.read(worker.slot)
                task_id, index, _, started = posted
                item = find_item(worker.held, task_id)
                limit = None if item is None else time_limit(item, index)
                if item is not None and item.kill:
                    worker.kill(KillReason(item, index, None))
                    continue
                if limit is None or started <= 0:
                    # Not started yet, or returned (no timeout any more).
                    pause = TIMEOUT_POLL_SECONDS
                else:
                    seconds, error = limit
                    deadline = started + int(seconds * 1e9)
                    if now < deadline:
                        pause = (deadline - now) / 1e9
                    elif pool.board.read(worker.slot) == posted:
                        worker.kill(KillReason(item, index, error))
                        continue
                    else:
                        pause = 0.0  # it moved on as we looked: look again
                wait = pause if wait is None else min(wait, pause)
        return wait

    def on_failure(self, error: BaseException) -> None:
        self.pool.break_pool(manager_failed("queue", "manager", error))

    def _read(self, worker: WorkerHandle) -> None:
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            # Dead or dying: its sentinel follows.
            worker.eof = True
            self.selector.unregister(worker.results)
            return
        except BadFrameError as why:
            # Out of step: read no more. It is killed; its sentinel follows.
            worker.eof = True
            self.selector.unregister(worker.results)
            self.triage.on_bad_frame(worker, why)
            return
        self.pool.on_message(worker, message)

    def _watch_new_workers(self) -> None:
        pool = self.pool
        if pool.generation == self.generation:
            return
        with pool.lock:
            self.generation = pool.generation
            workers = list(pool.workers.values())
        for worker in workers:
            if self.watching.get(worker.slot) is not worker:
                self.watching[worker.slot] = worker
                self.selector.register(worker.results, (worker, _RESULTS))
                self.selector.register(worker.process.sentinel, (worker, _EXITED))

    def _watch_outboxes(self) -> None:
        # Only this thread marks a worker gone (on_exit): not gone, it is open.
        pool = self.pool
        with pool.lock:
            unflushed, pool.unflushed = pool.unflushed, []
        for worker in unflushed:
            if not worker.gone and worker not in self.writing:
                self.writing.add(worker)
                self.selector.register(worker.tasks, (worker, _WRITABLE), write=True)

    def _flush(self, worker: WorkerHandle) -> bool:
        """Write ``worker``'s outbox as far as its pipe takes it; True once empty."""
        with self.pool.lock:
            outbox = worker.outbox
            try:
                while outbox:
                    if not worker.tasks.write_nowait(outbox[0]):
                        return False
                    outbox.popleft()
            except OSError:
                # Dead: its exit settles or resends what it held.
                outbox.clear()
            return True

    def _stop_writing(self, worker: WorkerHandle) -> None:
        if worker in self.writing:
            self.writing.discard(worker)
            self.selector.unregister(worker.tasks)

    def _forget(self, worker: WorkerHandle) -> None:
        if self.watching.get(worker.slot) is worker:
            del self.watching[worker.slot]
        if not worker.eof:
            self.selector.unregister(worker.results)
        self.selector.unregister(worker.process.sentinel)
        self._stop_writing(worker)


class _Selector:
    """Wait for any of several pipes and sentinels.

    ``select.epoll`` directly where there is one: it is on every task's path,
    and :mod:`selectors` adds bookkeeping. Else :mod:`selectors`, or
    :func:`multiprocessing.connection.wait` on Windows.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector: selectors.BaseSelector | None = None
        if self._epoll is None and os.name == "posix":
            self._selector = selectors.DefaultSelector()
        self._data: dict[Any, Any] = {}

    def register(self, obj: Any, data: Any, write: bool = False) -> None:
        """Watch ``obj`` for data to read (or, with ``write``, for room)."""
        if self._epoll is not None:
            fd = obj if isinstance(obj, int) else obj.fileno()
            self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
            self._data[fd] = data
        elif self._selector is not None:
            events = selectors.EVENT_WRITE if write else selectors.EVENT_READ
            self._selector.register(obj, events, data)
        elif not write:
            self._data[obj] = data
        # Windows: callers write frames whole; no pipe is watched for room.

    def unregister(self, obj: Any) -> None:
        if self._epoll is not None:
            fd = obj if isinstance(obj, int) else obj.fileno()
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
            self._data.pop(fd, None)
        elif self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(obj)
        else:
            self._data.pop(obj, None)

    def select(self, timeout: float | None, poll: float = 0.0) -> list[Any]:
        """What is ready within ``timeout``; with epoll, polled for ``poll`` first."""
        epoll = self._epoll
        if epoll is None:
            if self._selector is not None:
                return [key.data for key, _ in self._selector.select(timeout)]
            ready = wait_connections(list(self._data), timeout)
            return [self._data[obj] for obj in ready]
        events = []
        if poll > 0.0 and timeout != 0.0:
            if timeout is not None and timeout < poll:
                poll = timeout
            events = poll_for(epoll.poll, poll)
            if timeout is not None:
                timeout -= poll
        if not events:
            events = epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        data = self._data
        return [data[fd] for fd, _ in events if fd in data]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        elif self._selector is not None:
            self._selector.close()
