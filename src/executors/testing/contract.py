"""Deprecated: the conformance classes now live in one module per topic.

Import them from :mod:`executors.testing` (``from executors.testing import
SubmitContract``), which is where they have always been documented. This
module re-exports them for one release and then goes.
"""

from __future__ import annotations

import warnings

from .callbacks import CallbackContract
from .crash import CrashContract
from .initializer import InitializerContract
from .map import MapContract
from .references import ReferenceContract
from .shutdown import ShutdownContract
from .submit import SubmitContract
from .task_control import TaskControlContract

__all__ = [
    "CallbackContract",
    "CrashContract",
    "InitializerContract",
    "MapContract",
    "ReferenceContract",
    "ShutdownContract",
    "SubmitContract",
    "TaskControlContract",
]

warnings.warn(
    "executors.testing.contract is deprecated and will be removed in the next "
    "release: import the behaviour classes from executors.testing",
    DeprecationWarning,
    stacklevel=2,
)
