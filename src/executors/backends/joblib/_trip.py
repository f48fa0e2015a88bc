"""What travels to the workers, and the errors loky reports about it.

A call travels as :mod:`executors._outcome` bytes, pickled lazily in loky's
sending thread by :class:`Payload`; what the workers run with it is in
:mod:`._worker`. :func:`translate_error` is the one
boundary where joblib's and loky's errors become the project's.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import re
import uuid
from collections import ChainMap
from collections.abc import Callable
from typing import Any

from joblib._memmapping_reducer import (
    TemporaryResourcesManager,
    get_memmapping_reducers,
)
from joblib.externals.loky import process_executor as loky
from joblib.externals.loky.backend import reduction as loky_reduction

from ..._errors import WorkerCrashedError, describe_exitcode
from ..._outcome import INITIALIZER_FAILED_EXITCODE, dumps_through, initializer_error

__all__ = ["Memmapping", "Payload", "translate_error"]

BACKEND = "joblib"

# loky's message for a task it could not pickle; it keeps only the text of
# the pickler's error (as __cause__), not the error itself.
_LOKY_PICKLING_FAILED = "Could not pickle the task to send it to the workers."

# loky's TerminatedWorkerError message lists the exit codes of the dead
# workers as "{EXIT(3), SIGKILL(-9)}".
_EXITCODES = re.compile(r"exit codes of the workers are \{([^}]*)\}")
_ONE_EXITCODE = re.compile(r"\((-?\d+)\)")


def translate_error(exc: BaseException, payload: object = None) -> BaseException:
    """Turn a pool's infrastructure error into the project's; others pass.

    Each case is in the table of ``docs/backends/joblib.md``; the original
    is kept as ``__cause__``. A task's own exception never comes here.

    Args:
        exc: The exception a pool reported for a task.
        payload: The task's :class:`~._trip.Payload`, if known: it holds the
            pickler's own error when pickling it failed.

    Returns:
        A new exception instance to set on one future, or ``exc`` itself.
    """
    if type(exc) is pickle.PicklingError and str(exc) == _LOKY_PICKLING_FAILED:
        original = getattr(payload, "error", None)
        if isinstance(original, BaseException):
            # As `raise original from cause` would.
            original.__cause__ = exc.__cause__
            original.__suppress_context__ = True
            return original
        return exc
    if isinstance(exc, loky.ShutdownExecutorError):
        # "cannot schedule new futures after shutdown" (the stdlib's), or
        # "... shutdown with kill_workers=True before this job could complete".
        return RuntimeError(str(exc))
    error: BaseException
    if isinstance(exc, loky.TerminatedWorkerError):
        found = _EXITCODES.search(str(exc))
        codes = [int(c) for c in _ONE_EXITCODE.findall(found.group(1) if found else "")]
        # The first non-zero exit code names the crash.
        exitcode = next((code for code in codes if code != 0), None)
        if INITIALIZER_FAILED_EXITCODE in codes:
            error = initializer_error(
                BACKEND, None, exitcode=INITIALIZER_FAILED_EXITCODE
            )
        else:
            exitcode = codes[0] if exitcode is None and codes else exitcode
            error = WorkerCrashedError(
                f"a worker process of the {BACKEND!r} executor died unexpectedly "
                f"({describe_exitcode(exitcode)}) while tasks were pending; "
                "the executor is broken and every unfinished task failed",
                exitcode,
            )
    elif isinstance(exc, loky.BrokenProcessPool):
        first_line = (str(exc).strip().splitlines() or [""])[0]
        error = WorkerCrashedError(f"the {BACKEND!r} executor is broken: {first_line}")
    else:
        return exc
    error.__cause__ = exc
    return error


class Payload:
    """One call; its pickle is the bytes of ``(fn, args, kwargs)`` for ``run_call``.

    Pickled with the memmapping reducers pointed at the executor's folder (a
    ``Parallel`` batch on loky points them at its call's folder, as joblib).
    With ``shm_threshold``, the large buffers that memmapping leaves (all of
    them when ``max_nbytes=None``) travel through shared memory, held while
    this object lives. ``error`` keeps what the pickler raised: loky keeps
    only its text.
    """

    __slots__ = ("__weakref__", "call", "error", "memmapping", "shm_threshold")

    def __init__(
        self,
        call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        memmapping: Memmapping,
        shm_threshold: int | None = None,
    ) -> None:
        self.call = call
        self.memmapping = memmapping
        self.shm_threshold = shm_threshold
        self.error: BaseException | None = None

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        self.memmapping.use_own_folder()
        try:
            if self.shm_threshold is None:
                data = self._pickle(None)
            else:
                data = bytes(dumps_through(self._pickle, self.shm_threshold, self))
        except Exception as exc:
            self.error = exc
            raise
        return bytes, (data,)

    def _pickle(self, buffer_callback: Callable[[Any], Any] | None) -> bytes:
        buffer = io.BytesIO()
        pickler = self.memmapping.pickler(
            buffer, pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback
        )
        pickler.dump(self.call)
        return buffer.getvalue()


class Memmapping:
    """The executor's temporary folder and joblib's reducers that fill it.

    Args:
        max_nbytes: Arrays larger than this travel as memory maps; ``None``
            turns memmapping off (no reducers).
        mmap_mode: Mode of the memory maps in the workers.
        temp_folder: Where they are written; default: joblib's choice.
        unlink_on_gc_collect: Whether a worker deletes a map's file when
            it lets go of it (needs loky's resource tracker in the workers).
    """

    def __init__(
        self,
        max_nbytes: int | None,
        mmap_mode: str | None,
        temp_folder: str | None,
        *,
        unlink_on_gc_collect: bool,
    ) -> None:
        # The folder context of plain submits; each Parallel call on loky
        # registers its own, as on joblib's executor.
        self.context = uuid.uuid4().hex
        self.manager = TemporaryResourcesManager(temp_folder, context_id=self.context)
        reducers: dict[type, Any] = {}
        if max_nbytes is not None:
            reducers, _ = get_memmapping_reducers(
                temp_folder_resolver=self.manager.resolve_temp_folder_name,
                max_nbytes=max_nbytes,
                mmap_mode=mmap_mode,
                unlink_on_gc_collect=unlink_on_gc_collect,
            )
        self.pickler = _pickler_with(reducers)

    def use_own_folder(self) -> None:
        self.manager.set_current_context(self.context)

    def clean(self) -> None:
        """Remove the folders of this executor (its work has finished)."""
        self.manager._clean_temporary_resources(force=False, allow_non_empty=True)


def _pickler_with(reducers: dict[type, Any]) -> type[pickle.Pickler]:
    """loky's pickler (cloudpickle by default) with ``reducers`` added.

    loky's own ``dump(obj, file, reducers)`` copies every reducer table into
    a new pickler on each call, which costs six times the pickling of a
    small call; this class is built once per executor. Its table is a live
    view, so a reducer registered later in ``copyreg`` still counts.
    """
    base = loky_reduction.get_loky_pickler()._loky_pickler_cls
    table = ChainMap(
        reducers,
        loky_reduction._dispatch_table,
        getattr(base, "dispatch_table", copyreg.dispatch_table),
    )
    return type("PayloadPickler", (base,), {"dispatch_table": table})
