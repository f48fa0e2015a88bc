"""Large buffers between processes through shared memory that is reused.

A pickle protocol 5 buffer at or above a threshold (a NumPy array's data)
leaves its pickle and travels in a *segment*: memory from
``os.memfd_create``, which has no name, so it cannot outlive the processes
that hold it (no ``/dev/shm`` entry, nothing for a resource tracker)::

    sender: owns the segment, alone writes it   receiver
    ─────────────────────────────────────────   ────────
    ship(buffers): a free segment of its own
      (or a new one); each buffer copied in;
      header.lease += 1                      ─▶ refs (pid, fd, inode, lease,
                                                 offsets), inside the message
                                               take(refs): /proc/<pid>/fd/<fd>
                                                 opened and mapped once per
                                                 segment, kept; flock(LOCK_SH);
                                                 header.picked = lease; one
                                                 view per buffer on the pages
                                               the values live on those pages;
                                               when the last view is gone:
                                                 flock(LOCK_UN)
    free again once the message's holder is gone (Shipment.held_by: the
    bytes that carry it, which the caller keeps while a retry may resend
    them) or the receiver has picked it (Shipment.until_picked), and no
    receiver holds LOCK_SH: then it is written again, for the next message.

* One copy per direction: the sender copies into pages it has written before
  (a fresh segment's pages cost the kernel an allocation and a zeroing each,
  several times the copy); the receiver's values use the pages themselves,
  and no process writes them until every receiver has let go. The kernel
  drops the lock of a receiver that dies, so a worker killed mid-task holds
  nothing.
* Pickle's semantics: the receiver's values are writable and its own; the
  sender copied its buffers out, and will not write the pages again while
  they are held.
* Nothing leaks: a segment's memory goes when the last process holding it
  closes it or dies, SIGKILL included. A process keeps at most
  :data:`KEEP_FREE_BYTES` of its own free segments for reuse; :func:`trim`
  drops them all (a backend calls it when it shuts down).
* If shared memory cannot be had (no ``memfd_create``, memory full),
  :func:`ship` warns once per process and returns ``None``: the caller sends
  the buffers in the message instead, and the task runs as without it.

The message format is the caller's: a backend whose wire carries frames of
its own (the queue backend) sends the ``refs`` bytes of a
:class:`Shipment` beside its pickle and calls :func:`take` on them; one whose
library moves ``bytes`` uses :func:`pack` and :func:`unpack`.
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from ._shmarena import (
    _PICKED,
    _PICKED_ONLY,
    _REF,
    _RETIRED,
    _WORD,
    KEEP_FREE_BYTES,
    Shipment,
    _Arena,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "KEEP_FREE_BYTES",
    "Shipment",
    "available",
    "check_threshold",
    "pack",
    "pickle_of",
    "retired",
    "ship",
    "take",
    "take_readonly",
    "trim",
    "unpack",
]

# Linux's memfd_create and /proc/<pid>/fd; elsewhere the default is off
# (no warning for what the platform cannot do; an explicit threshold warns).
_AVAILABLE = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
#: Buffers of at least this many bytes travel through shared memory by
#: default: below it the pipe's copy is cheaper than a lease's bookkeeping.
#: ``None`` where the platform has no ``memfd_create`` (not Linux).
DEFAULT_THRESHOLD: int | None = 1 << 20 if _AVAILABLE else None
#: First bytes of a message packed with :func:`pack` (a pickle starts 0x80).
MAGIC = b"\x00shm"
_LEN = struct.Struct("<I")


def retired(refs: bytes | memoryview) -> bool:
    """Whether the segment of ``refs``, mapped here, was released by its owner."""
    pid, _, ino = _REF.unpack_from(refs)[:3]
    arena = _arena
    mapped = None if arena is None else arena.mapped.get((pid, ino))
    if mapped is None:
        return True
    return bool(_WORD.unpack_from(mapped.mm, _RETIRED)[0])


_arena: _Arena | None = None
_arena_lock = threading.Lock()
_warned = False
_old_arenas: list[_Arena] = []


def _get() -> _Arena:
    global _arena
    arena = _arena
    if arena is None:
        with _arena_lock:
            if _arena is None:
                _arena = _Arena()
            arena = _arena
    return arena


def _after_fork() -> None:
    global _arena
    if _arena is not None:
        _arena.forget()
        _old_arenas.append(_arena)
        _arena = None


os.register_at_fork(after_in_child=_after_fork)


def available() -> bool:
    """Whether this platform has what :func:`ship` and :func:`take` use."""
    return _AVAILABLE


def ship(buffers: Sequence[Any], resident: bool = True) -> Shipment | None:
    """Copy ``buffers`` into one of this process's segments.

    Args:
        buffers: C- or Fortran-contiguous buffers (``pickle.PickleBuffer``
            from a pickler's ``buffer_callback``), none empty.
        resident: Copy through this process's mapping of the segment, the
            fastest way, its pages then resident here too; ``False``: with
            ``pwrite``, about a third as fast, the pages resident only in
            the receiver (a caller whose own memory holds the user's data).

    Returns:
        The shipment, whose segment stays the receiver's until the sender
        calls :meth:`Shipment.held_by` or :meth:`Shipment.until_picked` and
        their condition is met; ``None`` (after one warning per process) if
        shared memory cannot be had: send the buffers in-band then.
    """
    global _warned
    try:
        if not available():
            raise OSError("os.memfd_create or /proc is missing on this system")
        return _get().ship(buffers, resident)
    except OSError as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"executors: shared memory is unavailable ({exc}); large "
                "buffers travel through the pipe instead, which is slower. "
                "Free memory, or pass shm_threshold=None to silence this.",
                RuntimeWarning,
                stacklevel=2,
            )
        return None


def unpicked() -> bool:
    """Whether a segment of this process, sent once, is not taken yet."""
    arena = _arena
    if arena is None:
        return False
    with arena.lock:
        return any(
            segment.state == _PICKED_ONLY
            and _WORD.unpack_from(segment.mm, _PICKED)[0] != segment.lease
            for segment in arena.own
        )


def wait_picked(bound: float) -> None:
    """Wait, up to ``bound`` seconds, until this process's messages are taken.

    For a worker about to exit while its last result may be unread: its
    segment must still be there when the receiver opens it.
    """
    deadline = time.monotonic() + bound
    while unpicked() and time.monotonic() < deadline:
        time.sleep(0.001)


#: How long an exiting process waits for its last messages to be taken.
#: Bounded: a receiver that is gone never takes them.
EXIT_PICK_SECONDS = 10.0
_exit_wait_pid: int | None = None


def wait_at_exit() -> None:
    """Register, once per process, the wait for unread messages at exit."""
    global _exit_wait_pid
    if _exit_wait_pid == os.getpid():
        return
    _exit_wait_pid = os.getpid()
    # A multiprocessing child runs these finalizers as it exits (it skips
    # atexit); any other process runs atexit. Both run it: the second
    # finds nothing unread.
    from multiprocessing import util

    util.Finalize(None, wait_picked, args=(EXIT_PICK_SECONDS,), exitpriority=100)
    atexit.register(wait_picked, EXIT_PICK_SECONDS)


def take(refs: bytes | memoryview) -> list[memoryview]:
    """Views of a shipment's buffers, on the sender's pages (no copy).

    Each view is writable (read-only if its buffer was) and holds the
    segment until it, and everything made from it, is collected.

    Raises:
        OSError: The segment cannot be opened (its sender is gone).
    """
    return _get().take(refs)


def take_readonly(refs: bytes | memoryview) -> list[memoryview]:
    """As :func:`take`, the views read-only (an object shared by many)."""
    return _get().take(refs, readonly=True)


def trim() -> None:
    """Release this process's free segments and its unused mappings."""
    if _arena is not None:
        _arena.trim()


def pack(data: bytes, refs: bytes) -> bytes:
    """One message: a pickle whose out-of-band buffers are in ``refs``."""
    return b"".join((MAGIC, _LEN.pack(len(refs)), refs, data))


def unpack(
    message: bytes | bytearray | memoryview,
) -> tuple[memoryview, list[memoryview]] | None:
    """The pickle and its buffers, if ``message`` came from :func:`pack`."""
    view = memoryview(message)
    if view[: len(MAGIC)] != MAGIC:
        return None
    start = len(MAGIC) + _LEN.size
    (length,) = _LEN.unpack_from(view, len(MAGIC))
    buffers = take(view[start : start + length])
    return view[start + length :], buffers


def pickle_of(message: bytes | memoryview) -> memoryview:
    """The pickle inside :func:`pack`'s ``message`` (its buffers not taken)."""
    view = memoryview(message)
    (length,) = _LEN.unpack_from(view, len(MAGIC))
    return view[len(MAGIC) + _LEN.size + length :]


def loads(message: bytes | bytearray | memoryview) -> Any:
    """Unpickle a message, packed or plain."""
    unpacked = unpack(message)
    if unpacked is None:
        return pickle.loads(message)
    data, buffers = unpacked
    return pickle.loads(data, buffers=buffers)


def check_threshold(value: object) -> int | None:
    """Validate ``create(shm_threshold=...)``: bytes, at least 1, or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"shm_threshold must be an int (bytes) or None, not {type(value).__name__}"
        )
    if value < 1:
        raise ValueError("shm_threshold must be at least 1 (bytes), or None")
    return value
