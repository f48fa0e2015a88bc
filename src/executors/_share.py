"""``Executor.share(obj)``: one object placed once for many tasks.

The caller pickles the object once into shared memory
(:class:`Shared`); a worker maps the segment read-only and unpickles the
object once (:func:`_shared_value`), keeping it for the next tasks.
"""

from __future__ import annotations

import itertools
import os
import pickle
from typing import Any

from . import _shm
from ._outcome import _dump

__all__ = ["Shared"]


class Shared:
    """One object placed once for many tasks (``Executor.share(obj)``).

    Passed as an argument, at any depth, to any number of tasks in other
    processes, it unpickles there to the object itself. The object is
    pickled once, here: its pickle and its pickle-5 buffers (an array's
    data) go into one shared memory segment, which every worker maps
    read-only and without a copy; each worker unpickles the object once and
    keeps it for the next tasks. A task's message carries only the handle's
    name and where the segment is. Where shared memory cannot be had, the
    pickle travels with each message instead, and is still unpickled once
    per worker.

    Attributes:
        value: The object, in this process.
    """

    __slots__ = ("__weakref__", "_data", "_key", "_refs", "_shipment", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self._key = f"{os.getpid()}-{next(_share_ids)}"
        buffers: list[memoryview] = []

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            try:
                raw = buffer.raw()
            except BufferError:
                return True
            if not raw.nbytes:
                return True
            buffers.append(raw)
            return False

        data = _dump(value, out_of_band, None)
        shipment = None
        if buffers or len(data) >= _SHARED_INLINE_BYTES:
            # Mapped here too: a page mapped by the caller and the workers
            # is no worker's own (USS), however many map it.
            shipment = _shm.ship([*buffers, memoryview(data)], resident=True)
            if shipment is None and buffers:
                data = _dump(value, None, None)
        self._shipment = shipment
        self._data = b"" if shipment is not None else data
        self._refs = b"" if shipment is None else shipment.refs

    def release(self) -> None:
        """Free the shared memory once no worker holds the object; idempotent.

        A worker lets go of its copy the next time it receives a shared
        object; tasks must not be given this handle any more.
        """
        shipment, self._shipment = self._shipment, None
        self._refs = self._data = b""
        if shipment is not None:
            shipment.retire()

    @property
    def released(self) -> bool:
        return not (self._refs or self._data)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.released:
            raise ValueError(
                f"the shared object {self._key} was released; share() it again"
            )
        return _shared_value, (self._key, self._data, self._refs)


_share_ids = itertools.count(1)
# A shared object whose pickle is smaller, and holds no buffer, travels in
# each task's message (a segment takes at least a megabyte).
_SHARED_INLINE_BYTES = 64 * 1024
# In a worker: each shared object received, by key, with its segment refs.
_shared_objects: dict[str, tuple[Any, bytes]] = {}


def _shared_value(key: str, data: bytes, refs: bytes) -> Any:
    """The object of a :class:`Shared` handle, unpickled once per process."""
    for old, (_, old_refs) in list(_shared_objects.items()):
        if old_refs and _shm.retired(old_refs):
            del _shared_objects[old]
    found = _shared_objects.get(key)
    if found is not None:
        return found[0]
    if refs:
        *buffers, pickled = _shm.take_readonly(refs)
        value = pickle.loads(pickled, buffers=buffers)
        del pickled
    else:
        value = pickle.loads(data)
    _shared_objects[key] = (value, refs)
    return value
