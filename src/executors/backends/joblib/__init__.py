"""Backend ``joblib``: joblib's workers behind the contract.

Each executor owns its workers. With ``joblib_backend="loky"`` (the default)
they are a loky ``ProcessPoolExecutor`` made for this executor alone and
configured the way joblib configures its own (memmapping of large NumPy
arrays, BLAS/OpenMP thread limits in the workers), but never joblib's
process-wide *reusable* executor: two executors never share, resize or shut
down each other's workers, and ``shutdown()`` stops them. ``"threading"``
runs tasks on a thread pool of the executor's own, ``"multiprocessing"`` on
a ``multiprocessing.Pool`` under the shared Pool watch. How a call flows::

    submit(fn, *args)      map (shared engine)      map (map_engine="parallel")
        │                    chunks via submit        joblib.Parallel: one
        │                        │                    call per batch
        v                        v                        v
    CallQueue: our futures; a queued one cancels; at most 2 * workers + 1
        │ launched (_pools)
        v
    Payload pickled in the library's sending thread (loky's pickler,
    joblib's memmapping reducers) ─▶ worker: _outcome.run_call ─▶ bytes
        │
    future ◀── CallQueue.settle(decode(outcome)) ◀── the library's thread;
               its errors through translate_error (_translate)

Modules: :mod:`._executor` (the executor and its hooks), :mod:`._pools`
(loky, threads, multiprocessing), :mod:`._queue` (window, abandoned executors),
:mod:`._trip` (what travels, memmapping),
:mod:`._parallel` (the ``Parallel`` map engine), :mod:`._translate` (the one
error boundary), :mod:`._checks` (option validation).
"""

from __future__ import annotations

from ._checks import JOBLIB_BACKENDS, MAP_ENGINES
from ._executor import JoblibExecutor
from ._translate import translate_error

__all__ = ["JOBLIB_BACKENDS", "MAP_ENGINES", "JoblibExecutor", "translate_error"]
