"""Messages between the parent and a worker: one frame each, on a pipe.

::

    +------+------+---------+-------+-------------+
    | kind | nbuf | task id | value | body length |   HEADER (29 bytes)
    +------+------+---------+-------+-------------+
    | nbuf lengths of the out-of-band buffers     |   8 bytes each
    | body: a pickle (protocol 5)                 |
    | buffer 1 ... buffer nbuf                    |   raw bytes, no copy
    +---------------------------------------------+

On POSIX a frame is written with ``writev`` from the objects' own memory
and read with plain reads into the memory the object is rebuilt on;
elsewhere it travels as :class:`multiprocessing.connection.Connection`
messages. The parent reads a worker's frames only as far as the bytes the
worker posted on the board: a frame that something else in the worker
wrote raises :class:`BadFrameError` before anything is allocated or
waited for. See ``docs/backends/queue.md``, "The transport: who writes
what".
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ... import _shm

__all__ = [
    "CALL",
    "CHUNK",
    "CHUNK_DONE",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "LEAVING",
    "PARTIAL",
    "POLL_AFTER",
    "READY",
    "RESULT",
    "SOON",
    "BadFrameError",
    "Channel",
    "Message",
    "Part",
    "SenderGone",
    "discard",
    "frame",
    "loads",
]

# Parent -> worker. `value` is POLL_AFTER or 0 (a task's timeout is the
# parent's to keep).
CALL = 1  # body: pickle of (fn, args, kwargs)
CHUNK = 2  # body: see dumps_chunk()
# Sent to a pool where no other worker held an item: a round trip's, whose
# worker may poll for the next (docs/backends/queue.md, "Inside").
POLL_AFTER = 1.0
# Worker -> parent. `value` is the seconds the worker spent on the task.
READY = 10  # the initializer has run; no body
INIT_FAILED = 11  # body: the initializer's exception
RESULT = 12  # body: the return value
ERROR = 13  # body: the task's exception, with its traceback
PARTIAL = 14  # body: the values of a chunk's next items, sent early
CHUNK_DONE = 15  # body: (the last values, the exception or None)
# Recycling (max_memory_per_child), after a task's outcome; no body.
SOON = 16  # past the point where its replacement should start
LEAVING = 17  # over the limit: it runs nothing more, and exits
# A worker sends only the kinds READY to LEAVING.
_FIRST_FROM_WORKER, _LAST_FROM_WORKER = READY, LEAVING
_INFINITY = float("inf")

HEADER = struct.Struct("<BIQdQ")
_LENGTH = struct.Struct("<Q")

# Reads up to this size go through os.read; larger ones into a buffer
# allocated once.
_SMALL_READ = 64 * 1024
# writev accepts at most IOV_MAX (1024 on Linux) parts per call.
_IOV_MAX = 512
# Raw descriptors need POSIX pipes; Windows pipes are handles.
_RAW_FDS = os.name == "posix"


# A piece of a frame: ``writev`` takes any of these.
Part = bytes | memoryview


class BadFrameError(Exception):
    """A frame from a worker that the worker's own sends do not account for.

    The stream is out of step from then on: the parent stops reading it and
    replaces the worker.
    """


class Message(NamedTuple):
    """One received frame."""

    kind: int
    task_id: int
    value: float
    body: bytes | bytearray | memoryview
    buffers: list[bytearray]


class Channel:
    """One direction of a pipe (``conn``, which owns the descriptor)."""

    __slots__ = ("_count", "_fd", "_index", "_posted", "conn")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._fd = conn.fileno() if _RAW_FDS else -1
        # Where the sender's byte count is posted, and the bytes so far.
        self._posted: memoryview | None = None
        self._index = 0
        self._count = 0

    def post_sent_to(self, view: memoryview, index: int) -> None:
        """Before each frame, post at ``view[index]`` the bytes sent in all."""
        self._posted, self._index = view, index
        self._count = view[index] = 0

    def check_against(self, view: memoryview, index: int) -> None:
        """:meth:`recv` refuses a frame the count at ``view[index]`` does not cover."""
        self._posted, self._index = view, index
        self._count = 0

    def fileno(self) -> int:
        return self.conn.fileno()

    def poller(self) -> Callable[[float], object]:
        """``ready(0)``: true (without waiting) once there is data or end-of-file."""
        if os.name != "posix":
            return self.conn.poll
        # poll, not select: select fails on descriptors past 1023.
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        return poller.poll

    def close(self) -> None:
        self.conn.close()

    def send(
        self,
        kind: int,
        task_id: int,
        value: float = 0.0,
        body: bytes = b"",
        buffers: Sequence[memoryview] = (),
    ) -> None:
        """Send one frame; blocks while the pipe is full (the worker's side)."""
        parts = frame(kind, task_id, value, body, buffers)
        posted = self._posted
        if posted is not None:
            # Posted before the first byte is written (see check_against).
            count = self._count + (len(parts[0]) if len(parts) == 1 else _size(parts))
            self._count = posted[self._index] = count
        if self._fd < 0:
            self._send_via_connection(parts)
        elif len(parts) == 1:
            # The common case: one small frame, one system call.
            data = parts[0]
            written = os.write(self._fd, data)
            if written < len(data):
                _write_all(self._fd, [memoryview(data)[written:]])
        else:
            _write_all(self._fd, parts)

    def send_nowait(
        self,
        kind: int,
        task_id: int,
        value: float = 0.0,
        body: bytes = b"",
        buffers: Sequence[memoryview] = (),
    ) -> list[Part] | None:
        """Write what the pipe takes of one frame now; the parts left, or None.

        For the parent's non-blocking end of a task pipe. A pipe fills by
        pages, not bytes, so no byte count can promise that a write will not
        block: this one never does. What is left goes to
        :meth:`write_nowait` once the pipe has room.
        """
        parts = frame(kind, task_id, value, body, buffers)
        if self._fd < 0:
            # Windows pipes are handles: no non-blocking writes here.
            self._send_via_connection(parts)
            return None
        if len(parts) == 1:
            # The common case: one small frame, one system call.
            data = parts[0]
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                return parts
            if written == len(data):
                return None
            parts[0] = memoryview(data)[written:]
        return None if self.write_nowait(parts) else parts

    def write_nowait(self, parts: list[Part]) -> bool:
        """Write what the pipe takes of ``parts`` now (dropping it from them).

        True once nothing is left.
        """
        fd = self._fd
        while parts:
            try:
                written = os.writev(fd, parts[:_IOV_MAX])
            except BlockingIOError:
                return False
            _advance(parts, written)
        return True

    def make_nonblocking(self) -> None:
        """Make writes on this end return at once when the pipe is full."""
        if self._fd >= 0:
            os.set_blocking(self._fd, False)

    def _send_via_connection(self, parts: list[Part]) -> None:
        # The header, its buffer lengths and the body are one message;
        # each out-of-band buffer is a message of its own.
        head, *rest = parts
        if len(rest) <= 1:
            self.conn.send_bytes(bytes(head) + b"".join(bytes(p) for p in rest))
            return
        body, *buffers = rest
        self.conn.send_bytes(bytes(head) + bytes(body))
        for buffer in buffers:
            self.conn.send_bytes(buffer)

    def recv(self, announce: Callable[[int], None] | None = None) -> Message:
        """Receive one frame; blocks until it has fully arrived.

        ``announce(task_id)`` runs once the header is in, before the rest is
        read: a worker posts the task there, so a death while reading a
        large frame is that task's. EOFError: the other end closed.
        """
        if self._fd < 0:
            return self._recv_via_connection(announce)
        fd = self._fd
        posted = self._posted
        if posted is None:
            head = _read_exact(fd, HEADER.size)
        else:
            # Called once the pipe is readable: this read does not wait.
            head = os.read(fd, HEADER.size)
            # Bytes the worker posted and the parent has not read. Read
            # after the bytes came: it covers every frame in the pipe.
            room = posted[self._index] - self._count
            if len(head) < HEADER.size:
                if not head:
                    raise EOFError("the pipe was closed")
                if room < HEADER.size:
                    # Waiting for the rest of this header could take for
                    # ever: nobody is writing it.
                    raise self._bad(f"{len(head)} bytes", len(head), room)
                head += _read_exact(fd, HEADER.size - len(head))
        kind, nbuf, task_id, value, length = HEADER.unpack(head)
        if announce is not None:
            announce(task_id)
        if posted is not None:
            need = HEADER.size + 8 * nbuf + length
            # What the worker posted, the kinds it sends, a duration (NaN
            # fails too): a comparison each.
            if (
                need > room
                or not _FIRST_FROM_WORKER <= kind <= _LAST_FROM_WORKER
                or not 0.0 <= value < _INFINITY
            ):
                raise self._header_error(kind, nbuf, value, length, need, room)
        sizes = _read_exact(fd, 8 * nbuf) if nbuf else b""
        if posted is not None:
            if nbuf:
                need += sum(size for (size,) in _LENGTH.iter_unpack(sizes))
                if need > room:
                    raise self._header_error(kind, nbuf, value, length, need, room)
            self._count += need
        body = _read_exact(fd, length)
        buffers = []
        for (size,) in _LENGTH.iter_unpack(sizes):
            buffer = bytearray(size)
            _read_into(fd, memoryview(buffer))
            buffers.append(buffer)
        return Message(kind, task_id, value, body, buffers)

    def _header_error(
        self, kind: int, nbuf: int, value: float, length: int, need: int, room: int
    ) -> BadFrameError:
        what = (
            f"a frame of kind {kind} with {nbuf} out-of-band buffers, "
            f"a {length}-byte body and a duration of {value!r}"
        )
        return self._bad(what, need, room)

    @staticmethod
    def _bad(what: str, need: int, room: int) -> BadFrameError:
        return BadFrameError(
            f"{what} ({need} bytes in all) where the worker had sent {room} "
            "more bytes of its own: something else in the worker process "
            "wrote to the pipe (the task, a thread or C library it uses, or a "
            "child process, through an inherited descriptor)"
        )

    def _recv_via_connection(self, announce: Callable[[int], None] | None) -> Message:
        data = memoryview(self.conn.recv_bytes())
        kind, nbuf, task_id, value, length = HEADER.unpack_from(data)
        if announce is not None:
            announce(task_id)
        start = HEADER.size + 8 * nbuf
        posted = self._posted
        if posted is not None:
            # The Connection has read (and allocated) the first message by
            # its own length prefix; the buffers are still checked.
            room = posted[self._index] - self._count
            need = start + length
            if start <= len(data):
                need += sum(
                    s for (s,) in _LENGTH.iter_unpack(data[HEADER.size : start])
                )
            if (
                start > len(data)
                or need > room
                or not _FIRST_FROM_WORKER <= kind <= _LAST_FROM_WORKER
                or not 0.0 <= value < _INFINITY
            ):
                raise self._header_error(kind, nbuf, value, length, need, room)
            self._count += need
        buffers = []
        for (size,) in _LENGTH.iter_unpack(data[HEADER.size : start]):
            buffer = bytearray(size)
            self.conn.recv_bytes_into(buffer)
            buffers.append(buffer)
        return Message(kind, task_id, value, data[start : start + length], buffers)


def frame(
    kind: int, task_id: int, value: float, body: bytes, buffers: Sequence[memoryview]
) -> list[Part]:
    """The parts of one frame, in the order they are written."""
    head = HEADER.pack(kind, len(buffers), task_id, value, len(body))
    if buffers:
        head += b"".join(_LENGTH.pack(b.nbytes) for b in buffers)
        return [head, body, *buffers]
    if len(head) + len(body) <= _SMALL_READ:
        return [head + body]
    return [head, body]


def _size(parts: list[Part]) -> int:
    # Every part is bytes or a one-dimensional byte view: len is its size.
    return sum(map(len, parts))


def _advance(parts: list[Part], written: int) -> None:
    """Drop the first ``written`` bytes of ``parts``, in place.

    Empty parts at the front go too: a ``writev`` of only empty parts would
    write nothing, for ever.
    """
    done = 0
    count = len(parts)
    while done < count:
        size = len(parts[done])
        if written < size:
            if written:
                parts[done] = memoryview(parts[done])[written:]
            break
        written -= size
        done += 1
    del parts[:done]


def _write_all(fd: int, parts: list[Part]) -> None:
    # writev may write less than asked (a signal, or a huge frame): resume
    # exactly where it stopped.
    while parts:
        _advance(parts, os.writev(fd, parts[:_IOV_MAX]))


def _read_exact(fd: int, n: int) -> bytes | bytearray:
    if n <= _SMALL_READ:
        data = os.read(fd, n)
        if len(data) == n:
            return data
        if not data:
            raise EOFError("the pipe was closed")
        buffer = bytearray(n)
        buffer[: len(data)] = data
        _read_into(fd, memoryview(buffer)[len(data) :])
        return buffer
    buffer = bytearray(n)
    _read_into(fd, memoryview(buffer))
    return buffer


def _read_into(fd: int, view: memoryview) -> None:
    while view:
        n = os.readv(fd, [view])
        if n == 0:
            raise EOFError("the pipe was closed in the middle of a message")
        view = view[n:]


class SenderGone(Exception):
    """A message's shared memory went with its sender, before it was taken.

    Only a worker killed right after sending does this (one leaving on its
    own waits, :func:`executors._shm.wait_picked`): the message is lost with
    the worker.
    """


def loads(body: bytes | bytearray | memoryview, buffers: Sequence[bytearray]) -> Any:
    """Rebuild an object from a frame's body and buffers (they stay writable).

    A body that starts with :data:`executors._shm.MAGIC` (a pickle never
    does) came through shared memory: :func:`executors._outcome.place_apart`.

    Raises:
        SenderGone: Its shared memory cannot be opened any more.
    """
    if body[:4] == _shm.MAGIC:
        try:
            data, views = _unpack(body)
        except OSError as exc:
            raise SenderGone(str(exc)) from exc
        return pickle.loads(data, buffers=views)
    return pickle.loads(body, buffers=buffers)


def discard(message: Message) -> None:
    """Let a sender's segment go for a message dropped unread.

    A worker writes a segment again only once its message was taken: taking
    it, and dropping the views at once, tells it so.
    """
    if message.body[:4] == _shm.MAGIC:
        # An OSError: the sender is gone, and its segment with it.
        with contextlib.suppress(OSError):
            _unpack(message.body)


def _unpack(body: bytes | bytearray | memoryview) -> tuple[Any, list[memoryview]]:
    # A body over 64 KiB arrives as a bytearray (see _read_exact).
    unpacked = _shm.unpack(body if isinstance(body, bytes) else bytes(body))
    assert unpacked is not None  # the caller checked the magic
    return unpacked
