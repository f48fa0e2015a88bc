"""The conformance suite, shipped so that any backend can prove the contract.

A backend's test module inherits the behaviour classes and provides one
fixture, ``executor_factory``: a callable taking keyword options and returning
a new executor. See ``docs/plugins.md``.

Needs the ``test`` extra (pytest, hypothesis, psutil).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._support import (
        BOUND,
        ContractBase,
        child_processes,
        wait_for_no_new_children,
    )
    from .backpressure import BackpressureContract
    from .contract import (
        CrashContract,
        InitializerContract,
        MapContract,
        ShutdownContract,
        SubmitContract,
    )
    from .faults import (
        BadInputContract,
        InitializerFaultContract,
        LeakContract,
        PicklingFaultContract,
        ShutdownFaultContract,
        WorkerCrashContract,
    )

# Imported on first use (PEP 562): worker processes unpickle the task
# functions of ``executors.testing.tasks``, and importing this package must
# not cost them pytest and hypothesis (a third of a second per worker).
_EXPORTS = {
    "BOUND": "._support",
    "ContractBase": "._support",
    "child_processes": "._support",
    "wait_for_no_new_children": "._support",
    "CallbackContract": ".contract",
    "CrashContract": ".contract",
    "InitializerContract": ".contract",
    "MapContract": ".contract",
    "ReferenceContract": ".contract",
    "ShutdownContract": ".contract",
    "SubmitContract": ".contract",
    "TaskControlContract": ".contract",
    "PoolApplyContract": ".pool",
    "PoolCrashContract": ".pool",
    "PoolImapContract": ".pool",
    "PoolLifecycleContract": ".pool",
    "PoolMapContract": ".pool",
    "PoolStdlibErrorsContract": ".pool",
    "BackpressureContract": ".backpressure",
    "BadInputContract": ".faults",
    "InitializerFaultContract": ".faults",
    "LeakContract": ".faults",
    "PicklingFaultContract": ".faults",
    "ShutdownFaultContract": ".faults",
    "WorkerCrashContract": ".faults",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BOUND",
    "BackpressureContract",
    "BadInputContract",
    "CallbackContract",
    "ContractBase",
    "CrashContract",
    "InitializerContract",
    "InitializerFaultContract",
    "LeakContract",
    "MapContract",
    "PicklingFaultContract",
    "PoolApplyContract",
    "PoolCrashContract",
    "PoolImapContract",
    "PoolLifecycleContract",
    "PoolMapContract",
    "PoolStdlibErrorsContract",
    "ReferenceContract",
    "ShutdownContract",
    "ShutdownFaultContract",
    "SubmitContract",
    "TaskControlContract",
    "WorkerCrashContract",
    "child_processes",
    "wait_for_no_new_children",
]
