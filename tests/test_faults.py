"""The crash matrix and pickling failures, on every backend.

The fault classes live beside their topic's ordinary classes in
:mod:`executors.testing` (``crash``, ``pickling``, ``initializer``,
``shutdown``); each case selects itself by declared capability, so
in-process backends show up as skipped with the capability that excludes
them.
"""

from __future__ import annotations

from executors.testing import (
    InitializerFaultContract,
    PicklingFaultContract,
    ShutdownFaultContract,
    WorkerCrashContract,
)


class TestWorkerCrash(WorkerCrashContract):
    pass


class TestPicklingFault(PicklingFaultContract):
    pass


class TestInitializerFault(InitializerFaultContract):
    pass


class TestShutdownFault(ShutdownFaultContract):
    pass
