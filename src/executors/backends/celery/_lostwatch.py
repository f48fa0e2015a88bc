"""The thread that notices tasks lost with a worker that went silent.

Only on an existing deployment (the private worker is this process's own,
watched by :mod:`._deploymentwatch`). Celery acks a task as it starts
(``acks_late`` off), so a worker whose machine loses its network or power
takes the task with it: no result, no ``WorkerLostError`` (nobody is left
to send it), and its future would wait forever, holding one of the
executor's ``max_workers`` slots. Lose as many tasks as there are slots
and the executor hands the surviving workers nothing more.

So the thread learns which worker holds each task and notices a worker
that stops answering. As the executor connects, and then about once every
:data:`POLL_SECONDS` while tasks are out, it sends one broadcast: the ids
of the tasks no worker has named yet (``inspect().query_task``; each
worker answers with those it has received, running or prefetched), or a
plain ``ping`` once every task has its worker (the answer to
``query_task`` carries each task's arguments: a task's are fetched once)::

    a worker answers          -> alive; the tasks it names are held by it
    a worker that answered once stops answering, for lost_worker_timeout:
        the tasks it holds, and the tasks no worker has named that were
        sent before it fell silent (it may have taken them just before a
        poll could see them) -> lost
    a task sent lost_worker_timeout ago that no worker named and that is
        not in the broker's queue, at two polls in a row (Redis brokers:
        taken by a worker that never answered, one that died as it
        joined or was too slow to answer the polls) -> lost

A lost task's future fails with :class:`~executors.WorkerCrashedError`
(which ``retries=`` retries, on a worker that answers), its slot frees, and
its id is revoked, so that a worker that gets its message again (the Redis
transport restores unacknowledged messages after its visibility timeout)
drops it. A task may still be running on a machine that is cut off and
comes back: its late result is ignored.

A poll that cannot reach the broker counts for nothing: a lost broker is
the result listener's to report (:data:`._results.LOST_SECONDS`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ..._lifecycle import ManagerThread

__all__ = ["DEFAULT_LOST_WORKER_TIMEOUT", "POLL_SECONDS", "LostWorkerWatch"]

#: How long a worker holding our tasks may stay silent before they count
#: as lost. Shorter notices a lost machine sooner; too short takes a worker
#: that is merely slow to answer (a loaded machine, a slow network) for a
#: lost one, and its tasks then run twice.
DEFAULT_LOST_WORKER_TIMEOUT = 10.0
#: The pause between two polls while tasks are out.
POLL_SECONDS = 1.0
#: How long a poll waits for the next answer. A full poll waits this long
#: after the last answer (nobody knows how many workers there are); the
#: others end as soon as every worker that answered before has answered,
#: so that ``shutdown()``, which waits for a poll in progress, is not held.
REPLY_SECONDS = 0.5
#: One poll in this many is full, to meet workers that joined since; so is
#: every poll while a task sent before the last poll has no worker yet.
FULL_EVERY = 5


class LostWorkerWatch(ManagerThread):
    """Polls the workers holding one executor's tasks; reports lost ones.

    Args:
        app: The executor's Celery app.
        outstanding: Returns ``{task number: time sent}`` of the tasks out.
        task_id: The Celery task id of a task number.
        on_worker_lost: Called with ``(numbers, worker, silent_seconds)`` for the
            tasks lost with ``worker``, silent for that many seconds;
            ``worker`` is None for tasks that no worker ever named and that
            left the queue (``silent_seconds`` is then the timeout).
        on_failure: Called if the loop itself raised (a bug).
        timeout: ``lost_worker_timeout`` in seconds.
        queue_name: The queue the executor sends to (read on a Redis broker).
    """

    def __init__(
        self,
        app: Any,
        outstanding: Callable[[], dict[str, float]],
        task_id: Callable[[str], str],
        on_worker_lost: Callable[[list[str], str | None, float], object],
        on_failure: Callable[[BaseException], object],
        timeout: float,
        queue_name: str | None = None,
    ) -> None:
        super().__init__(name="executors-celery-lostwatch")
        self._queue_name = queue_name
        # Tasks neither named nor queued at the last poll.
        self._unaccounted: set[str] = set()
        self._app = app
        self._outstanding = outstanding
        self._task_id = task_id
        self._on_worker_lost = on_worker_lost
        self._failed = on_failure
        self._timeout = timeout
        self._stopping = threading.Event()
        # Worker name -> when the first poll it did not answer started.
        self._silent: dict[str, float] = {}
        # Workers that answered a poll, and the worker each task was last
        # named by.
        self._known: set[str] = set()
        self._holder: dict[str, str] = {}
        self._polls = 0
        self._last_poll = float("-inf")

    def stop(self) -> None:
        self._stopping.set()

    def on_failure(self, error: BaseException) -> None:
        self._failed(error)

    def loop(self) -> None:
        # At once, tasks or not: a worker must have answered once for its
        # silence to count, and the first tasks go out now.
        self.poll({})
        while not self._stopping.wait(POLL_SECONDS):
            sent = self._outstanding()
            if sent:
                self.poll(sent)

    def poll(self, sent: dict[str, float]) -> None:
        """One round: ask, then report what is lost."""
        started = time.monotonic()
        previous, self._last_poll = self._last_poll, started
        self._polls += 1
        # Only the tasks no worker has named yet are asked about (an answer
        # carries each task's arguments); a ping is enough for the others,
        # whose worker does not change.
        by_id = {
            self._task_id(number): number
            for number in sent
            if number not in self._holder
        }
        full = (
            not self._known
            or self._polls % FULL_EVERY == 0
            or any(sent[number] < previous for number in by_id.values())
        )
        try:
            inspect = self._app.control.inspect(
                timeout=REPLY_SECONDS, limit=None if full else len(self._known)
            )
            replies = (inspect.query_task(*by_id) if by_id else inspect.ping()) or {}
        except Exception:
            return  # the broker: the result listener judges that
        if self._stopping.is_set():
            return
        now = time.monotonic()
        for worker, tasks in replies.items():
            self._known.add(worker)
            self._silent.pop(worker, None)
            if not by_id or not isinstance(tasks, dict):
                continue
            for task_id in tasks:
                number = by_id.get(task_id)
                if number is not None:
                    self._holder[number] = worker
        for worker in self._known - set(replies):
            self._silent.setdefault(worker, started)
        lost: dict[str | None, list[str]] = {}
        for number, sent_at in sent.items():
            worker = self._lost_with(number, sent_at, now)
            if worker is not None:
                lost.setdefault(worker, []).append(number)
        blamed = {number for numbers in lost.values() for number in numbers}
        for number in self._nowhere(sent, blamed, now):
            lost.setdefault(None, []).append(number)
        # Read before _forget, which may drop a worker silent for long.
        silent_for: dict[str | None, float] = {
            worker: now - self._silent[worker] for worker in lost if worker is not None
        }
        self._forget(sent, now)
        for worker, numbers in lost.items():
            for number in numbers:
                self._holder.pop(number, None)
            self._on_worker_lost(numbers, worker, silent_for.get(worker, self._timeout))
            with contextlib.suppress(Exception):
                # A worker that receives the message again drops it.
                self._app.control.revoke([self._task_id(n) for n in numbers])

    def _lost_with(self, number: str, sent_at: float, now: float) -> str | None:
        holder = self._holder.get(number)
        if holder is not None:
            silent = self._silent.get(holder)
            if silent is not None and now - silent >= self._timeout:
                return holder
            return None
        # Never named by anyone: taken by a worker that fell silent before
        # the next poll could see it, or still queued. Only a task sent
        # before a worker fell silent can be on it.
        for worker, silent in self._silent.items():
            if sent_at < silent and now - silent >= self._timeout:
                return worker
        return None

    def _nowhere(
        self, sent: dict[str, float], blamed: set[str], now: float
    ) -> list[str]:
        """Old tasks no worker named, not in the queue now nor at the last poll."""
        old = [
            number
            for number, sent_at in sent.items()
            if number not in self._holder
            and number not in blamed
            and now - sent_at >= self._timeout
        ]
        if not old:
            self._unaccounted.clear()
            return []
        queued = self._queued([self._task_id(number) for number in old])
        if queued is None:
            return []  # not a Redis broker, or it did not answer
        unaccounted = {number for number in old if self._task_id(number) not in queued}
        # Twice in a row: a task that a live worker took between this
        # poll's question and the queue's read is named at the next poll.
        nowhere = sorted(unaccounted & self._unaccounted)
        self._unaccounted = unaccounted - set(nowhere)
        return nowhere

    def _queued(self, task_ids: list[str]) -> set[str] | None:
        """Which of ``task_ids`` wait in the broker's queue (Redis only)."""
        if self._queue_name is None:
            return None
        try:
            with self._app.connection_for_write() as conn:
                if conn.transport.driver_type != "redis":
                    return None
                channel = conn.default_channel
                client = channel.client
                found: set[str] = set()
                for priority in channel.priority_steps:
                    name = channel._q_for_pri(self._queue_name, priority)
                    for message in client.lrange(name, 0, -1):
                        found.update(
                            task_id
                            for task_id in task_ids
                            if f'"{task_id}"'.encode() in message
                        )
                return found
        except Exception:
            return None

    def _forget(self, sent: dict[str, float], now: float) -> None:
        for number in [n for n in self._holder if n not in sent]:
            del self._holder[number]
        # A worker silent this long has had its tasks failed: forgotten, so
        # that tasks sent later are not blamed on it.
        for worker, silent in list(self._silent.items()):
            if now - silent >= 3 * self._timeout:
                del self._silent[worker]
                self._known.discard(worker)
