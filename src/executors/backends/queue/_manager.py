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
from ..._options import cpu_count
from ._items import KillReason, WorkerHandle, find_item, time_limit
from ._wire import BadFrameError

if TYPE_CHECKING:
    from ._pool import QueuePool
    from ._triage import Triage

__all__ = ["Manager", "Wakeup"]

# Bounds how late an item not yet seen to start is stopped (or timed in a rerun).
TIMEOUT_POLL_SECONDS = 0.01
# Before it sleeps, the manager polls its pipes for up to this long while most
# of its recent waits ended sooner and a CPU is left over by the busy workers: a
# thread woken from sleep starts 20-40 µs later on a virtual machine, a third
# of a round trip (docs/backends/queue.md, "Inside: threads, locks and worker
# processes").
POLL_SECONDS = 200e-6
# While it polls, the manager looks this often at how long its thread was kept
# from a CPU (see cpu_wait_seconds): under 1% of the time alone on an idle
# machine, about 30% beside a CPU-bound program. Over a tenth twice in a row
# (once may be a burst: its own workers starting, a pause of the host), the CPU
# it takes is wanted: it polls no more for POLL_BACKOFF_SECONDS, then looks again.
CROWDED_CHECK_SECONDS = 0.1
POLL_BACKOFF_SECONDS = 1.0
_RESULTS, _EXITED, _WRITABLE = 0, 1, 2
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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
        self.cpus = cpu_count()
        # The share of its recent waits that ended within POLL_SECONDS.
        self.short_waits = 0.0
        # See CROWDED_CHECK_SECONDS: polling stopped until then; when the
        # manager last looked (0: not yet), and how long it had waited then.
        self.crowded_until = self.checked_at = 0.0
        self.waited_for_cpu = 0.0
        self.was_crowded = False  # at the last look

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
            # A moving average over the last few waits, whatever ended them:
            # one long wait (the machine paused this process) stops no polling.
            short = time.monotonic() - began <= POLL_SECONDS
            self.short_waits += (short - self.short_waits) * 0.25
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
        """Seconds to poll before sleeping: 0 unless waits are short and a CPU idles."""
        if self.short_waits < 0.5 or self.cpus < 2 or self._crowded():
            return 0.0
        # Without the lock: list() copies the values at once, and a count
        # that is already stale costs one poll at most.
        busy = sum(1 for worker in list(self.pool.workers.values()) if worker.held)
        return POLL_SECONDS if busy < self.cpus else 0.0

    def _crowded(self) -> bool:
        """Whether this thread waited for a CPU lately (CROWDED_CHECK_SECONDS)."""
        now = time.monotonic()
        if now < self.crowded_until:
            return True
        if self.checked_at and now < self.checked_at + CROWDED_CHECK_SECONDS:
            return False
        waited = cpu_wait_seconds()
        if waited is None:
            self.crowded_until = float("inf")  # cannot tell: never poll
            return True
        wanted = bool(self.checked_at) and (
            waited - self.waited_for_cpu > (now - self.checked_at) / 10
        )
        crowded, self.was_crowded = wanted and self.was_crowded, wanted
        if crowded:
            # Judged afresh once the back-off is over.
            self.crowded_until, self.checked_at = now + POLL_BACKOFF_SECONDS, 0.0
            self.was_crowded = False
        else:
            self.checked_at, self.waited_for_cpu = now, waited
        return crowded

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


def cpu_wait_seconds() -> float | None:
    """Seconds the calling thread has been kept from a CPU so far (Linux), or None.

    The time it waited, runnable, for one (``/proc/thread-self/schedstat``),
    plus its share of the time a hypervisor took the machine's CPUs away
    (steal, ``/proc/stat``): a thread that polls there burns CPU the host
    takes from the worker and the caller.
    """
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        try:
            waited = int(os.read(fd, 128).split()[1]) / 1e9
        finally:
            os.close(fd)
        fd = os.open("/proc/stat", os.O_RDONLY)
        try:
            # "cpu  user nice system idle iowait irq softirq steal ...", in ticks.
            steal = int(os.read(fd, 256).split(b"\n", 1)[0].split()[8])
        finally:
            os.close(fd)
    except (OSError, IndexError, ValueError):
        return None
    return waited + steal / _TICKS_PER_SECOND / (os.cpu_count() or 1)


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
            # Tight: the GIL is free only inside each epoll call.
            check, monotonic = epoll.poll, time.monotonic
            until = monotonic() + poll
            events = check(0)
            while not events and monotonic() < until:
                events = check(0)
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
