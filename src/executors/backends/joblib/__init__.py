"""Backend ``joblib``: joblib's workers (loky by default) behind the contract.

Each executor owns its workers, never joblib's reusable executor. How a call
flows, and what each option does: ``docs/backends/joblib.md``.
"""

from __future__ import annotations

from ._executor import JOBLIB_BACKENDS, MAP_ENGINES, JoblibExecutor
from ._trip import translate_error

__all__ = ["JOBLIB_BACKENDS", "MAP_ENGINES", "JoblibExecutor", "translate_error"]
