"""What a frame's body and buffers mean: pickles, and their decoding.

The buffer path, in both directions and nowhere else: :func:`dumps` decides
which buffers leave the pickle, :func:`._wire.frame` lists them after the
body (``writev`` writes them from the object's own memory),
:meth:`._wire.Channel.recv` reads each into a fresh ``bytearray``, and
:func:`loads` rebuilds the object on those. Everyone else passes
``(body, buffers)`` along unopened (:func:`._items.frame_size` only counts
the bytes).

With a shared memory threshold (``shm_threshold``), a pickle that has a
buffer at or above it sends all its out-of-band buffers through one
segment of :mod:`executors._shm` instead: the body is then
:func:`executors._shm.pack`'s message (the pickle and the segment's refs),
and there are no pipe buffers. The frame format does not change; a body
that starts with :data:`executors._shm.MAGIC` (a pickle never does) is
unpacked by :func:`loads`. The sender copies its buffers into the segment
once; the receiver's values live on its pages. The caller's segment is
held while the body lives (a call's body is kept for sending it again);
a worker's, until the parent has taken it (:func:`executors._shm.wait_picked` before the
worker exits). If shared memory cannot be had, the buffers travel through
the pipe as without it, after :func:`executors._shm.ship`'s one warning.
"""

from __future__ import annotations

import _thread
import contextlib
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ... import _shm
from ._wire import Message

if TYPE_CHECKING:
    from ..._map import Chunk

__all__ = [
    "OUT_OF_BAND_BYTES",
    "SenderGone",
    "discard",
    "dumps",
    "dumps_chunk",
    "dumps_outcome",
    "loads",
    "place",
    "worth_placing",
]

# Buffers smaller than this stay inside the pickle: a separate buffer costs
# a length field and an iovec entry, worth it only when it saves a copy of
# real size.
OUT_OF_BAND_BYTES = 64 * 1024


class _Held(bytes):
    """A body that holds its shared memory segment while it lives.

    ``bytes`` cannot be weakly referenced: the segment is let go in
    ``__del__``.
    """

    shipment: _shm.Shipment

    def __del__(self) -> None:
        try:
            self.shipment.release()
        except KeyboardInterrupt:
            # Dropped by the interpreter in __del__: the main thread gets it.
            _thread.interrupt_main()


def dumps(
    obj: object, shm_threshold: int | None = None
) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5; return the pickle and its large buffers.

    With ``shm_threshold`` under :data:`OUT_OF_BAND_BYTES`, buffers down to
    it leave the pickle too, so that :func:`place` can move them all.
    """
    buffers: list[memoryview] = []
    cutoff = OUT_OF_BAND_BYTES
    if shm_threshold is not None and shm_threshold < cutoff:
        cutoff = shm_threshold

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < cutoff or not raw.nbytes:
            return True
        buffers.append(raw)
        return False

    return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), buffers


def worth_placing(buffers: list[memoryview], shm_threshold: int | None) -> bool:
    """Whether :func:`place` should move ``buffers`` to shared memory."""
    return shm_threshold is not None and any(b.nbytes >= shm_threshold for b in buffers)


def place(
    body: bytes, buffers: list[memoryview], outcome: bool
) -> tuple[bytes, list[memoryview]]:
    """Move a pickle's buffers to one shared memory segment.

    Args:
        body: The pickle.
        buffers: Its out-of-band buffers, from :func:`dumps`.
        outcome: A worker's message, sent once: its segment is free again
            once the parent has taken it. Otherwise (a call, which may be
            sent again) the segment is held while the returned body lives.

    Returns:
        The new body and no buffers; or ``body`` and ``buffers`` unchanged
        if shared memory cannot be had (after one warning per process).
    """
    # A call is copied with pwrite, so that the caller's resident memory
    # holds the user's arrays, not also a copy of every argument it sent; a
    # worker copies through its mapping, the fastest way.
    shipment = _shm.ship(buffers, resident=outcome)
    if shipment is None:
        return body, buffers
    packed = _shm.pack(body, shipment.refs)
    if outcome:
        shipment.until_picked()
        return packed, []
    held = _Held(packed)
    held.shipment = shipment
    return held, []


def dumps_outcome(
    obj: object, shm_threshold: int | None
) -> tuple[bytes, list[memoryview]]:
    """Pickle a worker's message, its large buffers in shared memory."""
    body, buffers = dumps(obj, shm_threshold)
    if buffers and worth_placing(buffers, shm_threshold):
        return place(body, buffers, outcome=True)
    return body, buffers


def dumps_chunk(
    fn: object, chunk: Chunk, careful: int = 0, shm_threshold: int | None = None
) -> tuple[bytes, list[memoryview]]:
    """Pickle a chunk of ``map`` for :meth:`._worker._Runner.run_chunk`.

    Args:
        fn: The callable.
        chunk: The items.
        careful: Run the first ``careful`` items one per piece.
        shm_threshold: As for :func:`dumps`.
    """
    # The worker reads the flag as "single": map(), not starmap().
    return dumps((fn, chunk.items, careful, not chunk.star), shm_threshold)


class SenderGone(Exception):
    """A message's shared memory went with its sender, before it was taken.

    Only a worker killed right after sending does this (one leaving on its
    own waits, :func:`executors._shm.wait_picked`): the message is lost with the worker.
    """


def loads(body: bytes | bytearray | memoryview, buffers: Sequence[bytearray]) -> Any:
    """Rebuild an object from :func:`dumps`' output (buffers stay writable).

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


def _unpack(body: bytes | bytearray | memoryview) -> tuple[Any, list[memoryview]]:
    # A body over 64 KiB arrives as a bytearray (see _wire._read_exact).
    unpacked = _shm.unpack(body if isinstance(body, bytes) else bytes(body))
    assert unpacked is not None  # the caller checked the magic
    return unpacked


def discard(message: Message) -> None:
    """Let a sender's segment go for a message dropped unread.

    A worker writes a segment again only once its message was taken: taking
    it, and dropping the views at once, tells it so.
    """
    if message.body[:4] == _shm.MAGIC:
        # An OSError: the sender is gone, and its segment with it.
        with contextlib.suppress(OSError):
            _unpack(message.body)
