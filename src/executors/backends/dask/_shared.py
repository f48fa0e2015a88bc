"""``share()`` on Dask: an object scattered to every worker, read there by key.

The caller's handle holds Dask's future for the scattered data, so Dask
keeps it while the handle lives; a task's pickled arguments carry only the
key. The scattered futures a call's arguments hold are collected while it
is pickled (:func:`collecting`) and given to Dask as the task's
dependencies: Dask puts their data on the worker before the task runs
(the broadcast may not have reached every worker), and the task reads the
value from its worker's memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["DaskShared", "collecting"]

_collector = threading.local()


@contextlib.contextmanager
def collecting() -> Iterator[list[Any]]:
    """Collect the scattered futures of the handles pickled in this block."""
    found: list[Any] = []
    _collector.found = found
    try:
        yield found
    finally:
        _collector.found = None


class DaskShared:
    """One object placed on every worker of a Dask cluster.

    Attributes:
        value: The object, in this process.
    """

    __slots__ = ("__weakref__", "_future", "key", "value")

    def __init__(self, future: Any, value: object) -> None:
        self._future = future
        self.key = future.key
        self.value = value

    @property
    def released(self) -> bool:
        return self._future is None

    def release(self) -> None:
        """Let Dask forget the object once no task uses it; idempotent."""
        future, self._future = self._future, None
        if future is not None:
            # After shutdown the client may be closed: nothing is left to
            # forget then.
            with contextlib.suppress(Exception):
                future.release()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        future = self._future
        if future is None:
            raise ValueError(
                f"the shared object {self.key} was released; share() it again"
            )
        found = getattr(_collector, "found", None)
        if found is not None:
            found.append(future)
        return _shared_value, (self.key,)


def _shared_value(key: Any) -> Any:
    """In a Dask worker: the value scattered under ``key``."""
    from distributed import get_worker

    # A dependency of the task: Dask put it in this worker's memory.
    return get_worker().data[key]
