"""The conformance suite, shipped so that any backend can prove the contract.

A backend's test module inherits the behaviour classes and provides one
fixture, ``executor_factory``: a callable taking keyword options and returning
a new executor. See ``docs/plugins.md``.

One module per topic, each holding that topic's ordinary and fault classes
side by side: :mod:`.submit`, :mod:`.map`, :mod:`.shutdown` (and Ctrl-C),
:mod:`.initializer`, :mod:`.crash`, :mod:`.pickling`, :mod:`.callbacks`,
:mod:`.references`, :mod:`.task_control`, :mod:`.bad_input`, :mod:`.leaks`,
:mod:`.backpressure`, and :mod:`.pool` for the ``Pool`` API. Import the
classes from here: the modules they live in may move.

Needs the ``test`` extra (pytest, hypothesis, psutil).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._faults import ACCEPTED
    from ._support import (
        BOUND,
        ContractBase,
        child_processes,
        wait_for_no_new_children,
    )
    from .backpressure import BackpressureContract
    from .bad_input import BadInputContract
    from .callbacks import CallbackContract
    from .crash import CrashContract, WorkerCrashContract
    from .initializer import InitializerContract, InitializerFaultContract
    from .leaks import LeakContract
    from .map import MapContract
    from .pickling import PicklingFaultContract
    from .pool import (
        PoolApplyContract,
        PoolCrashContract,
        PoolImapContract,
        PoolLifecycleContract,
        PoolMapContract,
        PoolStdlibErrorsContract,
    )
    from .references import ReferenceContract
    from .shutdown import ShutdownContract, ShutdownFaultContract
    from .submit import SubmitContract
    from .task_control import TaskControlContract
    from .workers import (
        LogForwardingContract,
        NestedExecutorContract,
        RecyclingContract,
        ThreadLimitContract,
        WorkerFinalizerContract,
        WorkerIdentityContract,
    )

# Imported on first use (PEP 562): worker processes unpickle the task
# functions of ``executors.testing.tasks``, and importing this package must
# not cost them pytest and hypothesis (a third of a second per worker).
_EXPORTS = {
    "ACCEPTED": "._faults",
    "BOUND": "._support",
    "ContractBase": "._support",
    "child_processes": "._support",
    "wait_for_no_new_children": "._support",
    "CallbackContract": ".callbacks",
    "CrashContract": ".crash",
    "InitializerContract": ".initializer",
    "MapContract": ".map",
    "ReferenceContract": ".references",
    "ShutdownContract": ".shutdown",
    "SubmitContract": ".submit",
    "TaskControlContract": ".task_control",
    "PoolApplyContract": ".pool",
    "PoolCrashContract": ".pool",
    "PoolImapContract": ".pool",
    "PoolLifecycleContract": ".pool",
    "PoolMapContract": ".pool",
    "PoolStdlibErrorsContract": ".pool",
    "BackpressureContract": ".backpressure",
    "BadInputContract": ".bad_input",
    "InitializerFaultContract": ".initializer",
    "LeakContract": ".leaks",
    "PicklingFaultContract": ".pickling",
    "ShutdownFaultContract": ".shutdown",
    "WorkerCrashContract": ".crash",
    "LogForwardingContract": ".workers",
    "NestedExecutorContract": ".workers",
    "RecyclingContract": ".workers",
    "ThreadLimitContract": ".workers",
    "WorkerFinalizerContract": ".workers",
    "WorkerIdentityContract": ".workers",
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
    "ACCEPTED",
    "BOUND",
    "BackpressureContract",
    "BadInputContract",
    "CallbackContract",
    "ContractBase",
    "CrashContract",
    "InitializerContract",
    "InitializerFaultContract",
    "LeakContract",
    "LogForwardingContract",
    "MapContract",
    "NestedExecutorContract",
    "PicklingFaultContract",
    "PoolApplyContract",
    "PoolCrashContract",
    "PoolImapContract",
    "PoolLifecycleContract",
    "PoolMapContract",
    "PoolStdlibErrorsContract",
    "RecyclingContract",
    "ReferenceContract",
    "ShutdownContract",
    "ShutdownFaultContract",
    "SubmitContract",
    "TaskControlContract",
    "ThreadLimitContract",
    "WorkerCrashContract",
    "WorkerFinalizerContract",
    "WorkerIdentityContract",
    "child_processes",
    "wait_for_no_new_children",
]
