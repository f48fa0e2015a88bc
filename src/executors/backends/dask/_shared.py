"""``share()`` on Dask: an object scattered to every worker, read there by key.

The caller's handle holds Dask's future for the scattered data, so Dask
keeps it while the handle lives; a task's pickled arguments carry only the
key, and the worker running it reads the value from its own memory (where
the broadcast put it) or fetches it from a worker that has it.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["DaskShared"]


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
        if self._future is None:
            raise ValueError(
                f"the shared object {self.key} was released; share() it again"
            )
        return _shared_value, (self.key,)


def _shared_value(key: Any) -> Any:
    """In a Dask worker: the value scattered under ``key``."""
    from distributed import get_worker

    worker = get_worker()
    try:
        return worker.data[key]
    except KeyError:
        # A worker that joined after the broadcast (a restarted one): fetch
        # it from a worker that has it.
        from distributed import Future, get_client

        client: Any = get_client()  # distributed's gather is untyped
        return client.gather(Future(key, client))
