"""Backend ``queue``: our own worker pool, built from processes and pipes.

How a task flows, the modules and the transport's invariants:
``docs/backends/queue.md``. The names below are imported on first use: a
worker imports :mod:`._worker` (and so this package), and must not import
the executor's side with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from ..._control import TimeLimited, with_timeout
    from ..._errors import TaskKilledError
    from ._executor import QueueExecutor

__all__ = ["QueueExecutor", "TaskKilledError", "TimeLimited", "with_timeout"]

# Public name -> the module that defines it.
_HOMES = {
    "QueueExecutor": "._executor",
    "TaskKilledError": "executors._errors",
    "TimeLimited": "executors._control",
    "with_timeout": "executors._control",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
