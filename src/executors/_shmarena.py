"""The segments of :mod:`executors._shm`: this process's own, and the others' it maps.

:class:`_Arena` keeps them (one per process, in :mod:`executors._shm`);
:class:`Shipment` is what a sender holds of one message. The protocol is
described in :mod:`executors._shm`.
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import mmap
import os
import struct
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["KEEP_FREE_BYTES", "Shipment"]

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
        from . import _shm

        _shm.wait_at_exit()

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
