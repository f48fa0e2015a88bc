"""Behaviour classes for :class:`executors.Pool`, on any backend.

They check what a program written for ``multiprocessing.Pool`` observes:
the behaviours the stdlib's own ``_TestPool`` family checks (in CPython's
``Lib/test/_test_multiprocessing.py``), restated here in the suite's terms,
plus the guarantees ``multiprocessing.Pool`` lacks (a dead worker fails its
task, ``terminate()`` fails unfinished work instead of leaving ``get()``
waiting, a failing initializer breaks the pool instead of respawning
workers forever). ``docs/coming-from-pool.md`` lists those differences.

Like the executor classes of :mod:`executors.testing`, none has a ``Test``
prefix; a test module inherits them and provides ``executor_factory``. The
pools are built on it (``Pool(backend=executor_factory)``), so a backend
that passes the contract is tested as a ``Pool`` without anything more.
Tests select themselves by declared capability, never by backend name.

One module per part of the API: :mod:`.apply`, :mod:`.map` (``map``,
``starmap``, ``imap`` and their async forms), :mod:`.lifecycle` and
:mod:`.errors` (dead workers, the stdlib's error classes).
"""

from __future__ import annotations

from ._base import (
    MaybeEncodingError,
    PoolContractBase,
    PoolFactory,
    PoolRemoteTraceback,
    SayWhen,
    SizedButFailing,
    failing_input,
    square,
)
from .apply import PoolApplyContract
from .errors import PoolCrashContract, PoolStdlibErrorsContract
from .lifecycle import PoolLifecycleContract
from .map import PoolImapContract, PoolMapContract

__all__ = [
    "MaybeEncodingError",
    "PoolApplyContract",
    "PoolContractBase",
    "PoolCrashContract",
    "PoolFactory",
    "PoolImapContract",
    "PoolLifecycleContract",
    "PoolMapContract",
    "PoolRemoteTraceback",
    "PoolStdlibErrorsContract",
    "SayWhen",
    "SizedButFailing",
    "failing_input",
    "square",
]
