"""Backend ``joblib``: joblib's workers (loky by default) behind the contract.

Each executor owns its workers, never joblib's reusable executor. How a call
flows, and what each option does: ``docs/backends/joblib.md``.

The names below are imported on first use: a worker imports this package
to unpickle the function it runs (:mod:`._worker`), and must not import the
executor's side with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from ._executor import JOBLIB_BACKENDS, MAP_ENGINES, JoblibExecutor
    from ._trip import translate_error

__all__ = ["JOBLIB_BACKENDS", "MAP_ENGINES", "JoblibExecutor", "translate_error"]

# Public name -> the module that defines it.
_HOMES = {
    "JOBLIB_BACKENDS": "._executor",
    "MAP_ENGINES": "._executor",
    "JoblibExecutor": "._executor",
    "translate_error": "._trip",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
