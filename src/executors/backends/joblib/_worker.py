"""What joblib's workers run: a call, with joblib's rule for arrays in results.

Loky's workers and the watched Pool's unpickle :func:`run_on_loky` and
:func:`run_on_pool` from here, so this module imports nothing of the
caller's side (the executor, its pools, the call queue) and neither joblib
nor NumPy: a worker imports them only when a result holds an array.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..._outcome import Outcome, run_call

__all__ = ["run_on_loky", "run_on_pool"]


def run_on_loky(payload: bytes, shm_threshold: int | None = None) -> Outcome:
    """Run a call in a loky worker: its value's buffers travel as they are.

    loky pickles the outcome at protocol 5, so a large array is copied once
    into loky's message instead of three times; with ``shm_threshold``, into
    shared memory instead.
    """
    return run_call(payload, True, _RESULT_REDUCERS, shm_threshold)


def run_on_pool(payload: bytes, shm_threshold: int | None = None) -> Outcome:
    """Run a call in a ``multiprocessing.Pool`` worker of the executor."""
    return run_call(payload, False, _RESULT_REDUCERS, shm_threshold)


class _ArrayReducers(Mapping[type, Callable[[Any], Any]]):
    """joblib's rule for arrays in results, where NumPy is in use.

    Read when the result is pickled, after the task ran: a value can hold
    an array only if NumPy has been imported by then, so a worker whose
    tasks never touch NumPy never imports it (nor joblib) for this table.
    """

    def __init__(self) -> None:
        self._table: dict[type, Callable[[Any], Any]] | None = None

    def _current(self) -> dict[type, Callable[[Any], Any]]:
        if self._table is not None:
            return self._table
        np = sys.modules.get("numpy")
        if np is None:
            return {}  # no array can exist yet; look again next time
        reduce = _reduce_result_array
        self._table = {np.ndarray: reduce, np.memmap: reduce}
        return self._table

    def __getitem__(self, key: type) -> Callable[[Any], Any]:
        return self._current()[key]

    def __iter__(self) -> Iterator[type]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


_RESULT_REDUCERS = _ArrayReducers()


def _reduce_result_array(array: Any) -> Any:
    """As joblib's pools return an array: by value, unless it maps a user's file.

    An array on one of this executor's temporary memory maps (an argument
    that travelled as a map) comes back as a plain array, as from
    ``Parallel``: not as an ``np.memmap`` whose file will be deleted.
    """
    import numpy as np
    from joblib._memmapping_reducer import (
        JOBLIB_MMAPS,
        _get_backing_memmap,
        _reduce_memmap_backed,
    )

    backing = _get_backing_memmap(array)
    if isinstance(backing, np.memmap) and backing.filename not in JOBLIB_MMAPS:
        return _reduce_memmap_backed(array, backing)
    # NumPy's own reduction of a plain array keeps its buffer apart.
    return np.asarray(array).__reduce_ex__(pickle.HIGHEST_PROTOCOL)
