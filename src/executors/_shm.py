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

import _thread
import atexit
import contextlib
import fcntl
import mmap
import os
import pickle
import struct
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_THRESHOLD",
    "KEEP_FREE_BYTES",
    "Shipment",
    "available",
    "check_threshold",
    "pack",
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
#: Free segments a process keeps for its next messages. More keeps large
#: transfers fast after a burst (a new segment costs a page allocation per
#: 4 KB); less gives memory back sooner. trim() releases them all.
KEEP_FREE_BYTES = 512 << 20
# A segment's capacity is rounded up to this, so that one segment serves
# messages of nearby sizes.
_GRAIN = 1 << 20
# The header takes one page, so that the data starts page-aligned.
_HEADER = 4096
# Each buffer starts at a multiple of this (what NumPy's SIMD loops like).
_ALIGN = 64
# Header words (native 8-byte, written by one process each): the owner's
# lease number, the receiver's picked lease, the owner's "retired" mark.
_LEASE, _PICKED, _RETIRED = 0, 8, 16
_WORD = struct.Struct("=Q")
_REF = struct.Struct("<qqQQQI")  # pid, fd, inode, capacity, lease, buffers
_BUF = struct.Struct("<QQ?")  # offset, length, read-only
#: First bytes of a message packed with :func:`pack` (a pickle starts 0x80).
MAGIC = b"\x00shm"
_LEN = struct.Struct("<I")


class _Segment:
    """A segment this process created: it alone writes it."""

    __slots__ = ("fd", "ino", "lease", "mm", "size", "state", "used")

    def __init__(self, fd: int, mm: mmap.mmap, size: int) -> None:
        self.fd = fd
        self.mm = mm
        self.size = size
        self.ino = os.fstat(fd).st_ino
        self.lease = 0
        self.state = _FREE
        self.used = 0


# A segment's state in its owner: free; being filled or held for a message
# that may be sent again; handed over and let go by the sender, free once
# no receiver holds it; handed over once, free once picked and let go.
_FREE, _HELD, _RELEASED, _PICKED_ONLY, _RETIRING = range(5)


class _Mapped:
    """Another process's segment, mapped here to receive on."""

    __slots__ = ("fd", "ino", "live", "mm", "pid")

    def __init__(self, pid: int, fd: int, ino: int, mm: mmap.mmap) -> None:
        self.pid = pid
        self.fd = fd
        self.ino = ino
        self.mm = mm
        self.live = 0  # views handed out and not yet collected


class Shipment:
    """Buffers copied into a segment; the sender says how long it holds it.

    Attributes:
        refs: What the receiver passes to :func:`take`.
    """

    __slots__ = ("_segment", "refs")

    def __init__(self, segment: _Segment, refs: bytes) -> None:
        self._segment = segment
        self.refs = refs

    def held_by(self, holder: object) -> None:
        """Keep the segment while ``holder`` lives (it may be sent again)."""
        weakref.finalize(holder, self.release)

    def release(self, _: object = None) -> None:
        """The sender will not send it again (call once)."""
        self._segment.state = _RELEASED

    def until_picked(self) -> None:
        """Keep the segment until a receiver has taken it (sent once).

        A process that exits with such a segment not yet taken waits for
        the receiver first, up to :data:`EXIT_PICK_SECONDS` (a worker that
        leaves after its last task, at ``max_tasks_per_child``): its
        segment goes with it, and a result on it would be lost.
        """
        self._segment.state = _PICKED_ONLY
        _wait_at_exit()

    def retire(self) -> None:
        """Never write it again; close it once no receiver holds it.

        Receivers that cache values on it (:func:`shared_value`) let go of
        them the next time they look (:func:`sweep_shared`).
        """
        segment = self._segment
        _WORD.pack_into(segment.mm, _RETIRED, 1)
        segment.state = _RETIRING


class _Arena:
    """This process's segments: its own, and the others' it receives on."""

    def __init__(self) -> None:
        # An RLock: a view's finalizer may run in a thread holding it.
        self.lock = threading.RLock()
        self.own: list[_Segment] = []
        self.mapped: dict[tuple[int, int], _Mapped] = {}
        self.let_go: deque[_Mapped] = deque()
        # Each view's exporter, weakly (by the id of the reference: a
        # ctypes array has no hash), with the segment it is on.
        self.views: dict[int, tuple[weakref.ref[Any], _Mapped]] = {}
        self.uses = 0

    # -- sending ----------------------------------------------------------

    def ship(self, buffers: Sequence[Any], resident: bool) -> Shipment:
        views = [memoryview(b).cast("B") for b in buffers]
        layout = []
        end = _HEADER
        for view in views:
            layout.append((end, view.nbytes, view.readonly))
            end += -(-view.nbytes // _ALIGN) * _ALIGN
        with self.lock:
            self._drain()
            segment = self._free_segment(end)
        if segment is None:
            segment = self._create(-(-end // _GRAIN) * _GRAIN)
            with self.lock:
                self.own.append(segment)
        try:
            mm = segment.mm
            for view, (offset, length, _) in zip(views, layout, strict=True):
                if resident:
                    mm[offset : offset + length] = view
                else:
                    _write(segment.fd, view, offset)
            segment.lease += 1
            _WORD.pack_into(mm, _LEASE, segment.lease)
        except BaseException:
            segment.state = _FREE
            raise
        refs = _REF.pack(
            os.getpid(),
            segment.fd,
            segment.ino,
            segment.size,
            segment.lease,
            len(views),
        ) + b"".join(_BUF.pack(*entry) for entry in layout)
        return Shipment(segment, refs)

    def _free_segment(self, need: int) -> _Segment | None:
        """The smallest free segment that fits, marked filling; trims the rest."""
        free = [s for s in list(self.own) if self._is_free(s)]
        fits = [s for s in free if s.size >= need]
        chosen = min(fits, key=lambda s: s.size) if fits else None
        self.uses += 1
        if chosen is not None:
            chosen.state = _HELD
            chosen.used = self.uses
            free.remove(chosen)
        kept = 0
        # Keep the most recently used free segments, up to the budget.
        for segment in sorted(free, key=lambda s: -s.used):
            kept += segment.size
            if kept > KEEP_FREE_BYTES:
                self._retire(segment)
        return chosen

    def _is_free(self, segment: _Segment) -> bool:
        state = segment.state
        if state == _HELD:
            return False
        if (
            state == _PICKED_ONLY
            and _WORD.unpack_from(segment.mm, _PICKED)[0] != segment.lease
        ):
            return False
        if state != _FREE:
            # Handed over: free once no receiver holds a value on it.
            try:
                fcntl.flock(segment.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(segment.fd, fcntl.LOCK_UN)
            if state == _RETIRING:  # a shared object released: it goes
                self._retire(segment)
                return False
            segment.state = _FREE
        return True

    def _create(self, size: int) -> _Segment:
        fd = os.memfd_create("executors-shm", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            # Every page now, so that a full memory fails here, as an
            # OSError, and never as SIGBUS when the pages are written.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
            segment = _Segment(fd, mm, size)
        except BaseException:
            os.close(fd)
            raise
        segment.state = _HELD
        segment.used = self.uses
        return segment

    def _retire(self, segment: _Segment) -> None:
        """Close a free segment; receivers unmap it when they next look."""
        _WORD.pack_into(segment.mm, _RETIRED, 1)
        self.own.remove(segment)
        os.close(segment.fd)
        segment.mm.close()

    # -- receiving --------------------------------------------------------

    def take(
        self, refs: bytes | memoryview, readonly: bool = False
    ) -> list[memoryview]:
        pid, fd, ino, size, lease, count = _REF.unpack_from(refs)
        entries = [
            _BUF.unpack_from(refs, _REF.size + i * _BUF.size) for i in range(count)
        ]
        with self.lock:
            self._drain()
            mapped = self.mapped.get((pid, ino))
            if mapped is None:
                self._sweep()
                mapped = self.mapped[pid, ino] = _open(pid, fd, ino, size)
            if mapped.live == 0:
                fcntl.flock(mapped.fd, fcntl.LOCK_SH)
            mapped.live += count
        try:
            found = _WORD.unpack_from(mapped.mm, _LEASE)[0]
            if found != lease:
                raise OSError(
                    f"shared memory segment of pid {pid} was reused before it "
                    f"was read (lease {lease}, now {found}): the sender wrote it "
                    "again too early"
                )
            _WORD.pack_into(mapped.mm, _PICKED, lease)
            return [
                self._view(mapped, offset, length, readonly or frozen)
                for offset, length, frozen in entries
            ]
        except BaseException:
            with self.lock:
                mapped.live -= count
                if mapped.live == 0:
                    fcntl.flock(mapped.fd, fcntl.LOCK_UN)
            raise

    def _view(
        self, mapped: _Mapped, offset: int, length: int, readonly: bool
    ) -> memoryview:
        import ctypes

        # An exporter of its own per buffer: every view derived from it
        # (NumPy's array, memoryview(), toreadonly()) keeps it alive, so its
        # finalizer runs when the value is really gone.
        owner = (ctypes.c_char * length).from_buffer(mapped.mm, offset)
        # A bare weak reference, not weakref.finalize: the less Python runs
        # in a collection, the less often a Ctrl-C lands in it.
        ref = weakref.ref(owner, self._released)
        self.views[id(ref)] = (ref, mapped)
        view = memoryview(owner).cast("B")
        return view.toreadonly() if readonly else view

    def _released(self, ref: weakref.ref[Any]) -> None:
        # Runs wherever the value was collected, in any thread: never wait
        # for the lock. A KeyboardInterrupt raised in here would be printed
        # and dropped by the interpreter: it is passed on to the main thread.
        try:
            self.let_go.append(self.views.pop(id(ref))[1])
            if self.lock.acquire(blocking=False):
                try:
                    self._drain()
                finally:
                    self.lock.release()
        except KeyboardInterrupt:
            _thread.interrupt_main()

    def _drain(self) -> None:
        let_go = self.let_go
        while let_go:
            mapped = let_go.popleft()
            mapped.live -= 1
            if mapped.live == 0 and mapped.fd >= 0:
                fcntl.flock(mapped.fd, fcntl.LOCK_UN)
                if not _alive(mapped.pid):
                    # Its owner is gone (a worker after shutdown): this
                    # process was the last to hold its memory.
                    self._unmap(mapped)

    def _unmap(self, mapped: _Mapped) -> None:
        if self.mapped.get((mapped.pid, mapped.ino)) is mapped:
            del self.mapped[mapped.pid, mapped.ino]
        os.close(mapped.fd)
        mapped.fd = -1

    def _sweep(self, everything: bool = False) -> None:
        """Unmap others' segments that are retired, or whose owner is gone."""
        for mapped in list(self.mapped.values()):
            if mapped.live:
                continue
            retired = _WORD.unpack_from(mapped.mm, _RETIRED)[0]
            if not everything and not retired and _alive(mapped.pid):
                continue
            self._unmap(mapped)

    def trim(self) -> None:
        with self.lock:
            self._drain()
            for segment in [s for s in list(self.own) if self._is_free(s)]:
                self._retire(segment)
            self._sweep(everything=False)

    def forget(self) -> None:
        """In a forked child: the parent's segments are not the child's."""
        # The mappings stay (values the child inherited may live on them);
        # the descriptors go, so that the child holds no lock or memory of
        # the parent's for longer than those values.
        for segment in self.own:
            os.close(segment.fd)
            _close_unused(segment.mm)
        for mapped in self.mapped.values():
            os.close(mapped.fd)
            mapped.fd = -1
            _close_unused(mapped.mm)


def _close_unused(mm: mmap.mmap) -> None:
    """Unmap (and close mmap's own copy of the descriptor) unless in use."""
    # Before Python 3.13 (trackfd=False) every mmap keeps a dup of its
    # descriptor: a segment is held for as long as its mapping.
    with contextlib.suppress(BufferError):
        mm.close()


def _write(fd: int, view: memoryview, offset: int) -> None:
    """Copy ``view`` into the segment without mapping its pages here."""
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def retired(refs: bytes | memoryview) -> bool:
    """Whether the segment of ``refs``, mapped here, was released by its owner."""
    pid, _, ino = _REF.unpack_from(refs)[:3]
    arena = _arena
    mapped = None if arena is None else arena.mapped.get((pid, ino))
    if mapped is None:
        return True
    return bool(_WORD.unpack_from(mapped.mm, _RETIRED)[0])


def _open(pid: int, fd: int, ino: int, size: int) -> _Mapped:
    try:
        mine = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot open the shared memory segment of pid {pid} "
            f"(/proc/{pid}/fd/{fd}): {exc.strerror}; the sender has exited, "
            "or /proc hides other processes here (pass shm_threshold=None)",
        ) from None
    try:
        if os.fstat(mine).st_ino != ino:
            raise OSError(
                f"the shared memory segment of pid {pid} is gone (descriptor "
                f"{fd} is another file now)"
            )
        mm = mmap.mmap(mine, size)
    except BaseException:
        os.close(mine)
        raise
    return _Mapped(pid, mine, ino, mm)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def _wait_at_exit() -> None:
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
