"""What travels to the workers, and how large arrays travel as memory maps.

A call goes to a process worker as the bytes of ``(fn, args, kwargs)`` and
comes back as :mod:`executors._outcome` bytes, as on every process
backend, so a fault is the same fault everywhere: an argument that raises
while unpickled in the worker, or a result that cannot be unpickled here,
fails its own future with that error (raw loky breaks the whole pool on
both). The bytes are made by :class:`Payload`, lazily, in the library's
own sending thread, with loky's pickler (cloudpickle) and joblib's
memmapping reducers: a large NumPy argument becomes a reference to a
memory-mapped file in the executor's temporary folder.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

from joblib.externals.loky.backend.reduction import dump as loky_dump

from ..._remote import picklable_exception

__all__ = ["Failure", "Guarded", "Memmapping", "Payload"]


class Payload:
    """One call, pickled only when the library sends it.

    Its own pickle is the bytes of ``(fn, args, kwargs)``, for
    :func:`executors._outcome.run_call` in the worker.

    Args:
        call: ``(fn, args, kwargs)``.
        reducers: joblib's memmapping reducers, or ``None``.
        before_pickling: Points the memmapping reducers at this executor's
            temporary folder (a ``Parallel`` batch then points them at its
            own while it is pickled, as on joblib's executor).

    Attributes:
        error: What the pickler raised, kept for the error boundary (loky
            keeps only its text).
    """

    __slots__ = ("before_pickling", "call", "error", "reducers")

    def __init__(
        self,
        call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        reducers: dict[type, Any] | None,
        before_pickling: Callable[[], None] | None,
    ) -> None:
        self.call = call
        self.reducers = reducers
        self.before_pickling = before_pickling
        self.error: BaseException | None = None

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        if self.before_pickling is not None:
            self.before_pickling()
        buffer = io.BytesIO()
        try:
            loky_dump(self.call, buffer, reducers=self.reducers)
        except Exception as exc:
            self.error = exc
            raise
        return bytes, (buffer.getvalue(),)


class Failure:
    """An item's exception in a ``Parallel`` batch, returned as a value.

    Returning it lets ``Parallel`` deliver the results before a failing
    item instead of aborting the whole call.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        # Reached only across a process boundary: attach the traceback there.
        return Failure, (picklable_exception(self.error),)


class Guarded:
    """``fn`` for one ``Parallel`` item: a raised exception becomes a value.

    One instance per map is shared by every item of a batch, so it is
    pickled once per batch.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except BaseException as exc:
            return Failure(exc)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return Guarded, (self.fn,)


class Memmapping:
    """The executor's temporary folder and joblib's reducers that fill it.

    Args:
        max_nbytes: Arrays larger than this travel as memory maps; ``None``
            turns memmapping off (no reducers).
        mmap_mode: Mode of the memory maps in the workers.
        temp_folder: Where they are written; default: joblib's choice.
        unlink_on_gc_collect: Whether a worker deletes a map's file when
            it lets go of it (loky's workers run loky's resource tracker;
            ``multiprocessing`` workers do not, as in joblib's own pool).
    """

    def __init__(
        self,
        max_nbytes: int | None,
        mmap_mode: str | None,
        temp_folder: str | None,
        *,
        unlink_on_gc_collect: bool,
    ) -> None:
        from joblib._memmapping_reducer import (
            TemporaryResourcesManager,
            get_memmapping_reducers,
        )

        # The folder context of plain submits; each Parallel call on loky
        # registers its own, as on joblib's executor.
        self.context = uuid.uuid4().hex
        self.manager = TemporaryResourcesManager(temp_folder, context_id=self.context)
        self.reducers: dict[type, Any] | None = None
        if max_nbytes is not None:
            self.reducers, _ = get_memmapping_reducers(
                temp_folder_resolver=self.manager.resolve_temp_folder_name,
                max_nbytes=max_nbytes,
                mmap_mode=mmap_mode,
                unlink_on_gc_collect=unlink_on_gc_collect,
            )

    def use_own_folder(self) -> None:
        self.manager.set_current_context(self.context)

    def payload(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Payload:
        return Payload((fn, args, kwargs), self.reducers, self.use_own_folder)

    def clean(self) -> None:
        """Remove the folders of this executor (its work has finished)."""
        self.manager._clean_temporary_resources(force=False, allow_non_empty=True)
