"""Which worker takes an item now: idle first, else send-ahead."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._board import STARTED

if TYPE_CHECKING:
    from ._items import WorkerHandle
    from ._pool import QueuePool

__all__ = ["AHEAD_SECONDS", "MAX_TASKS_AHEAD", "pick_worker"]

# A busy worker is sent more items ahead of its answers, so that it starts
# the next one without waiting for a round trip through the manager thread
# (a wake-up can take a millisecond on a loaded machine). Items sent ahead
# can no longer be cancelled and may wait behind a long task while another
# worker idles, so the pool sends ahead only about AHEAD_SECONDS of work,
# judged by the average task so far: none for tasks that long, none before
# any task has finished, at most MAX_TASKS_AHEAD for tiny ones.
AHEAD_SECONDS = 0.02
MAX_TASKS_AHEAD = 8


def pick_worker(pool: QueuePool, size: int) -> WorkerHandle | None:
    """The worker to send an item of ``size`` bytes now, if any (``pool.lock``).

    An idle ready worker first; while the pool starts, one still importing;
    else, in a full pool of ready workers, the least busy one within its
    send-ahead allowance and with room in its pipe.
    """
    seconds = pool.task_seconds
    if seconds is None:
        # No task has finished: the one running may be long, and an item
        # sent behind it would wait there while another worker idles.
        ahead = 0
    elif seconds >= AHEAD_SECONDS:
        ahead = 0
    else:
        ahead = min(MAX_TASKS_AHEAD, int(AHEAD_SECONDS / max(seconds, 1e-6)))
    busy: WorkerHandle | None = None
    unready: WorkerHandle | None = None
    any_ready = any_unready = False
    for worker in pool.workers.values():
        if worker.spare:
            continue  # takes over from its predecessor, later
        if worker.kill_reason is not None or worker.retiring:
            # On its way out: its replacement may take the item soon.
            any_unready = True
            continue
        held = len(worker.held)
        if worker.ready:
            any_ready = True
            if held == 0:
                return worker
            if (
                held <= ahead
                and not worker.outbox
                and worker.held_bytes + size <= worker.capacity
                and (busy is None or held < len(busy.held))
                and not _running_long(pool, worker)
            ):
                busy = worker
        else:
            any_unready = True
            if held == 0 and size <= worker.capacity and unready is None:
                unready = worker
    if unready is not None and not any_ready:
        # The pool is starting: the item waits in the pipe of a worker
        # that is still importing, and runs the moment it is ready.
        return unready
    # Send ahead only to a full pool of ready workers: while a worker is
    # starting, or the pool can grow, the item may run sooner there.
    if (
        busy is not None
        and not any_unready
        and not pool.free_ids
        and pool.starting == 0
    ):
        return busy
    return None


def _running_long(pool: QueuePool, worker: WorkerHandle) -> bool:
    """Whether the worker's task has run past the send-ahead budget.

    An outlier (a task that waits on an event): an item sent behind it would
    wait there while other workers take the queue.
    """
    started = pool.board.read(worker.slot)[STARTED]
    if started <= 0:  # not started yet, or returned
        return False
    return time.monotonic_ns() - started > AHEAD_SECONDS * 1e9
