"""Worker slots: each worker holds one of ``range(max_workers)`` while it lives.

A worker claims the lowest free slot, and the kernel frees it when the
worker ends, however it ends (SIGKILL included): so a replacement takes
the slot of the worker it replaces, and nothing is left to clean up.

On Linux a slot is a unix socket bound in the abstract namespace,
``\\0executors-<token>-slot-<i>``: a bind fails while another live process
holds the name. Elsewhere it is an ``flock`` on a file ``slot-<i>`` in the
caller's private folder (made ``0700`` by the caller, removed at its
shutdown; left behind if the caller is killed).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import weakref

__all__ = ["SLOT_WAIT_SECONDS", "Slot", "abstract_sockets"]

#: How long a worker waits for a slot to free. A replacement may start
#: while the worker it replaces is still exiting; longer than that means
#: something else holds the slots (see the error's message).
SLOT_WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.005


def abstract_sockets() -> bool:
    """Whether slots are abstract unix sockets (Linux) rather than files."""
    return sys.platform.startswith("linux")


class Slot:
    """The claim of one worker on a slot.

    Args:
        token: The executor's token: slots of different executors differ.
        count: The number of slots, ``max_workers``.
        folder: The caller's private folder, where sockets are unavailable.
    """

    def __init__(self, token: str, count: int, folder: str | None) -> None:
        self.token = token
        self.count = count
        self.folder = folder
        self.index: int | None = None
        self._held: socket.socket | int | None = None
        _claims.add(self)

    def try_claim(self) -> int | None:
        """Claim the lowest free slot; ``None`` if every one is held."""
        if self.index is not None:
            return self.index
        for index in range(self.count):
            held = self._take(index)
            if held is not None:
                self._held, self.index = held, index
                return index
        return None

    def claim(self, wait: float | None = SLOT_WAIT_SECONDS) -> int:
        """Claim a slot, waiting for one held by a worker that ends.

        Args:
            wait: Seconds, then ``RuntimeError``; ``None``: as long as it
                takes, with a warning on ``executors.workers`` each
                :data:`SLOT_WAIT_SECONDS` (a spare started ahead of a
                recycled worker waits here, warm, until that one leaves).
        """
        start = time.monotonic()
        warned = start
        while (index := self.try_claim()) is None:
            now = time.monotonic()
            if wait is not None and now - start > wait:
                raise RuntimeError(self._all_held(wait))
            if wait is None and now - warned > SLOT_WAIT_SECONDS:
                warned = now
                logging.getLogger("executors.workers").warning(
                    "%s", self._all_held(now - start)
                )
            time.sleep(_POLL_SECONDS)
        return index

    def _all_held(self, seconds: float) -> str:
        return (
            f"worker pid {os.getpid()} found all {self.count} worker slots "
            f"held for {seconds:.0f}s: {self.count} other workers of this "
            "executor are alive (one will leave: it is being recycled), or a "
            "child process they started without exec (os.fork) still holds a "
            "slot"
        )

    def release(self) -> None:
        held, self._held = self._held, None
        self.index = None
        if isinstance(held, socket.socket):
            held.close()
        elif isinstance(held, int):
            # Closing the descriptor drops the flock (no other copy exists:
            # forked children close theirs, see _forget_in_child).
            os.close(held)

    def _take(self, index: int) -> socket.socket | int | None:
        if self.folder is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(f"\0executors-{self.token}-slot-{index}")
            except OSError:
                sock.close()
                return None
            return sock
        import fcntl

        path = os.path.join(self.folder, f"slot-{index}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd


_claims: weakref.WeakSet[Slot] = weakref.WeakSet()


def _forget_in_child() -> None:
    # A child forked by a task (os.fork, a nested pool under "fork") is not
    # the worker: its copy of the claim must not keep the slot held once
    # the worker is gone.
    for slot in list(_claims):
        slot.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
