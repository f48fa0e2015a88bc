"""Stopping one task of a :class:`multiprocessing.pool.Pool`: :class:`TaskSlots`.

Pool cannot lose one worker: it records nowhere which worker holds which
task, and killing a worker at the wrong moment (idle on the task pipe's
lock, or sending a result) hangs it. A backend that wants to stop one task
(a timeout, ``kill_task``) creates a :class:`TaskSlots`, hands it to the
workers through :meth:`.watch.PoolWatch.pool_options`, and runs its calls
through :func:`run_tracked`::

    worker: run_tracked(call_id, payload)
              under TaskSlots.lock: skip the call if it was stopped before
              it started, else write call_id into this worker's slot
              run_call(payload)
              under TaskSlots.lock: clear the slot
    caller: PoolWatch.stop_call(call_id) -> TaskSlots.stop
              under TaskSlots.lock: the worker whose slot holds call_id is
              inside the task (holding none of Pool's locks) and cannot
              leave it before the lock is free: mark its pid "stopped on
              purpose" and SIGKILL it; the watch then lets Pool replace it
              like a worker that retired. A call in no slot is marked to be
              skipped by the worker that takes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

from ..._outcome import Outcome, dump_error, run_call
from ..._workers._pools import replacement_due

__all__ = ["STOP_KILLED", "STOP_SKIPPED", "TaskSlots", "run_tracked"]

# Slots beyond one per worker: Pool may start a replacement before the
# watch has released the slot of the worker it replaces.
SPARE_SLOTS = 8
# Calls stopped before they started and not yet taken by a worker, per
# worker: a stop beyond this fails (the call is then left to run).
SKIPPED_PER_WORKER = 8
# How long a stop waits for the slots' lock, which workers hold only for a
# few instructions: longer means a worker died holding it, and the watch is
# breaking the pool.
SLOTS_LOCK_SECONDS = 1.0

#: :meth:`PoolWatch.stop_call`: the worker running the call was killed.
STOP_KILLED = "killed"
#: :meth:`PoolWatch.stop_call`: the call had not started; no worker runs it.
STOP_SKIPPED = "skipped"


class TaskSlots:
    """Which worker runs which call, shared by the caller and its workers.

    Pool hands a task to whichever worker reads its pipe first, so the
    caller cannot know which process to kill to stop one task; and killing
    a worker at the wrong moment (idle on the task pipe's lock, or sending
    a result) would hang the Pool. Each worker claims a slot as it starts
    and :func:`run_tracked` writes the id of the call it runs there, under
    :attr:`lock`. :meth:`PoolWatch.stop_call` kills a worker only under the
    same lock and only while its slot holds the call: the worker is then
    inside the task, and leaving the task takes the lock, so the kill lands
    before the worker can touch any of Pool's locks again.

    Created in the caller from the Pool's context and passed to the workers
    with the Pool's initializer arguments (:meth:`PoolWatch.pool_options`).

    Args:
        context: The Pool's multiprocessing context.
        workers: The Pool's number of worker processes.
    """

    def __init__(self, context: BaseContext, workers: int) -> None:
        slots = workers + SPARE_SLOTS
        self.lock = context.Lock()
        # Shared memory without a lock of its own: every read and write of
        # more than one value happens under `lock`.
        self.pids = context.RawArray("q", slots)
        self.calls = context.RawArray("q", slots)
        # skipped[0] is the count; the ids follow.
        self.skipped = context.RawArray("q", 1 + SKIPPED_PER_WORKER * workers)

    def close(self) -> None:
        """Give the shared memory back now that no worker is left.

        The arrays live in multiprocessing's shared heap; left to the
        garbage collector (the Pool keeps this object in its initializer
        arguments), the heap would grow a new arena, two more descriptors,
        every few dozen executors.
        """
        empty: Any = ()
        self.pids = self.calls = self.skipped = empty

    # -- worker side --

    def claim(self) -> None:
        """Take a free slot for this worker process (at its start)."""
        global _worker_slot
        pid = os.getpid()
        with self.lock:
            for index, owner in enumerate(self.pids):
                # A slot whose owner is gone, or whose pid this process now
                # has, was not released yet: the worker it held is dead.
                if owner in (0, pid) or not _pid_exists(owner):
                    self.calls[index] = 0
                    self.pids[index] = pid
                    _worker_slot = (self, index)
                    return
        # No slot: this worker's tasks cannot be stopped (stop_call then
        # marks them skipped, and the worker checks that too).
        _worker_slot = (self, -1)

    def take_skipped(self, call_id: int) -> bool:
        """Drop ``call_id`` from the skipped calls; True if it was there.

        Call with :attr:`lock` held.
        """
        skipped = self.skipped
        count = skipped[0]
        for index in range(1, count + 1):
            if skipped[index] == call_id:
                skipped[index] = skipped[count]
                skipped[count] = 0
                skipped[0] = count - 1
                return True
        return False

    # -- caller side --

    def stop(self, call_id: int, kill: Callable[[int], None]) -> str | None:
        """Stop one call: kill its worker, or mark it skipped.

        Args:
            call_id: The id the call was launched with.
            kill: Kills the worker with this pid; called under the lock.

        Returns:
            :data:`STOP_KILLED`, :data:`STOP_SKIPPED`, or None if the call
            could not be stopped (too many skipped calls pending, or the
            lock is stuck because a worker died holding it).
        """
        if not self.lock.acquire(timeout=SLOTS_LOCK_SECONDS):
            return None
        try:
            calls = self.calls
            for index in range(len(calls)):
                if calls[index] == call_id:
                    pid = self.pids[index]
                    if pid <= 0:  # never signal a process group
                        return None
                    kill(pid)
                    return STOP_KILLED
            # Not started yet (or just finished: then its outcome is on its
            # way, and the backend calls unskip() once it arrives).
            skipped = self.skipped
            count = skipped[0]
            if count >= len(skipped) - 1:
                return None
            skipped[count + 1] = call_id
            skipped[0] = count + 1
            return STOP_SKIPPED
        finally:
            self.lock.release()

    def unskip(self, call_id: int) -> None:
        """Forget a skipped call whose worker will never take it."""
        if not self.skipped[0]:
            return
        if self.lock.acquire(timeout=SLOTS_LOCK_SECONDS):
            try:
                self.take_skipped(call_id)
            finally:
                self.lock.release()

    def release(self, pid: int) -> None:
        """Free the slot of a worker that exited."""
        if not self.lock.acquire(timeout=SLOTS_LOCK_SECONDS):
            return  # a worker died holding it: the pool is breaking anyway
        try:
            pids = self.pids
            for index in range(len(pids)):
                if pids[index] == pid:
                    self.calls[index] = 0
                    pids[index] = 0
        finally:
            self.lock.release()


# In a worker: its TaskSlots and the index of its slot (-1: none free).
_worker_slot: tuple[TaskSlots, int] | None = None


def run_tracked(
    call_id: int, payload: bytes, shm_threshold: int | None = None
) -> Outcome:
    """Run a call as :func:`~executors._outcome.run_call` does, in a slot.

    The task wrapper of a Pool with :class:`TaskSlots`: while the call runs
    its id is in this worker's slot, so that the caller can stop it, and a
    call stopped before it started is not run at all. ``shm_threshold`` is
    run_call's.
    """
    slot = _worker_slot
    if slot is None:
        outcome = run_call(payload, False, None, shm_threshold)
        # A recycled worker's replacement starts in time (see _workers._pools).
        replacement_due(announce=True)
        return outcome
    slots, index = slot
    lock = slots.lock
    with lock:
        if slots.skipped[0] and slots.take_skipped(call_id):
            # Its future has failed already: nothing reads this outcome.
            return _SKIPPED
        if index >= 0:
            slots.calls[index] = call_id
    try:
        outcome = run_call(payload, False, None, shm_threshold)
    finally:
        if index >= 0:
            with lock:
                slots.calls[index] = 0
    replacement_due(announce=True)
    return outcome


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # pragma: no cover - another user's process: not ours
        return True
    return True


_SKIPPED: Outcome = (
    False,
    dump_error(RuntimeError("the call was stopped before it started")),
)
