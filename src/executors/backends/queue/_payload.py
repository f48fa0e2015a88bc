"""What a frame's body and buffers mean: pickles, and their decoding.

The buffer path, in both directions and nowhere else: :func:`dumps` decides
which buffers leave the pickle, :func:`._wire.frame` lists them after the
body (``writev`` writes them from the object's own memory),
:meth:`._wire.Channel.recv` reads each into a fresh ``bytearray``, and
:func:`loads` rebuilds the object on those. Everyone else passes
``(body, buffers)`` along unopened (:attr:`._items.Task.size` only counts
the bytes).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._map import ChunkResult
from ._wire import CHUNK_DONE, ERROR, RESULT, Message

if TYPE_CHECKING:
    from ..._map import Chunk
    from ._items import WorkItem

__all__ = [
    "OUT_OF_BAND_BYTES",
    "decode_exception",
    "decode_outcome",
    "dumps",
    "dumps_chunk",
    "loads",
]

# Buffers smaller than this stay inside the pickle: a separate buffer costs
# a length field and an iovec entry, worth it only when it saves a copy of
# real size.
OUT_OF_BAND_BYTES = 64 * 1024


def dumps(obj: object) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5; return the pickle and its large buffers."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        buffers.append(raw)
        return False

    return pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), buffers


def dumps_chunk(
    fn: object, chunk: Chunk, careful: int = 0
) -> tuple[bytes, list[memoryview]]:
    """Pickle a chunk of ``map`` for :meth:`._worker._Runner.run_chunk`.

    Args:
        fn: The callable.
        chunk: The items.
        careful: Run the first ``careful`` items one per piece.
    """
    # The worker reads the flag as "single": map(), not starmap().
    return dumps((fn, chunk.items, careful, not chunk.star))


def loads(body: bytes | bytearray | memoryview, buffers: Sequence[bytearray]) -> Any:
    """Rebuild an object from :func:`dumps`' output (buffers stay writable)."""
    return pickle.loads(body, buffers=buffers)


# Decoding catches BaseException: unpickling runs any callable the pickle
# names, and a SystemExit (or any BaseException) it raises in the manager
# thread would break the whole pool. It fails only its own task.


def decode_exception(message: Message) -> BaseException:
    try:
        error = loads(message.body, message.buffers)
    except BaseException as exc:
        return exc
    if isinstance(error, BaseException):
        return error
    return RuntimeError(f"a worker sent {error!r} as an exception")


def decode_outcome(
    item: WorkItem, message: Message
) -> tuple[Any, BaseException | None]:
    """Unpickle a final message; an unpicklable result fails its task."""
    if message.kind == ERROR:
        return None, decode_exception(message)
    try:
        payload = loads(message.body, message.buffers)
    except BaseException as exc:
        return None, exc
    if message.kind == RESULT:
        return payload, None
    assert message.kind == CHUNK_DONE
    values, error = payload
    elapsed = item.elapsed + message.value
    if item.undecodable is not None:
        return ChunkResult(item.values, item.undecodable, elapsed), None
    if item.values:
        values = item.values + values
    return ChunkResult(values, error, elapsed), None
