"""What a backend author needs, in one public module.

Users of the library need only :mod:`executors`. A backend (a plugin, or one
of the built-in ones) is written against this module::

    from executors.backend import BaseExecutor, CallQueue, Future

    class MyExecutor(BaseExecutor):
        backend = "mine"
        ...

What it holds:

* :class:`BaseExecutor`: the base class that keeps the contract (guards,
  ``map``, ``shutdown``, Ctrl-C, ``terminate_workers``, the context
  manager, the exit hook).
* :class:`BackendHooks`: the interface a backend implements, the one list
  of its hooks (two required, the others optional with defaults);
  ``BaseExecutor`` inherits it.
* :class:`CallQueue` and :class:`Call`: the queue of futures in front of a
  library (window, exact cancellation, task control, break, close).
* :class:`Future`, :func:`settle`, :func:`fail_futures`,
  :func:`notify_cancelled`: the one future type and the one way to finish it.
  Where a backend has a :class:`CallQueue`, it settles through the queue's
  own ``settle``: settling a queued call's future directly would keep its
  window slot taken for good.
* :class:`ManagerThread`: the base of a backend's own manager threads; if
  its loop raises, every future it owns fails instead of hanging.
* For backends whose workers are other processes: :func:`dumps` (a call
  pickled now, so that a pickling error fails only its future),
  :func:`run_call` (the worker's side: unpickle, run, pickle the outcome),
  :func:`decode` (the caller's side), :class:`PickledCall` (a call pickled
  by the library's own sending thread), and :class:`WorkerBootstrap` (the
  initializer every worker process runs first: the parent watch, then the
  user's initializer).
* :func:`initializer_error`: the :class:`~executors.InitializerFailedError`
  of a failed initializer, in the one wording every backend uses (the
  shipped suite checks it).
"""

from __future__ import annotations

from ._base import BaseExecutor
from ._bootstrap import initializer_error
from ._callqueue import Call, CallQueue
from ._capabilities import Capabilities
from ._futures import Future, fail_futures, notify_cancelled, settle
from ._hooks import BackendHooks
from ._lifecycle import ManagerThread
from ._outcome import Outcome, PickledCall, WorkerBootstrap, decode, dumps, run_call

__all__ = [
    "BackendHooks",
    "BaseExecutor",
    "Call",
    "CallQueue",
    "Capabilities",
    "Future",
    "ManagerThread",
    "Outcome",
    "PickledCall",
    "WorkerBootstrap",
    "decode",
    "dumps",
    "fail_futures",
    "initializer_error",
    "notify_cancelled",
    "run_call",
    "settle",
]
