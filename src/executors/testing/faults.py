"""Deprecated: the fault classes now live beside their topic's other classes.

Import them from :mod:`executors.testing` (``from executors.testing import
WorkerCrashContract``; ``ACCEPTED`` too). This module re-exports them for
one release and then goes.
"""

from __future__ import annotations

import warnings

from ._faults import ACCEPTED
from .bad_input import BadInputContract
from .crash import WorkerCrashContract
from .initializer import InitializerFaultContract
from .leaks import LeakContract
from .pickling import PicklingFaultContract
from .shutdown import ShutdownFaultContract

__all__ = [
    "ACCEPTED",
    "BadInputContract",
    "InitializerFaultContract",
    "LeakContract",
    "PicklingFaultContract",
    "ShutdownFaultContract",
    "WorkerCrashContract",
]

warnings.warn(
    "executors.testing.faults is deprecated and will be removed in the next "
    "release: import the behaviour classes and ACCEPTED from executors.testing",
    DeprecationWarning,
    stacklevel=2,
)
