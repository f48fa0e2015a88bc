"""Backend ``dask``: a Dask cluster, local by default, remote by address.

How it works, with the data flow and the modules: docs/backends/dask.md.

The names below are imported on first use: a worker imports this package
for its preload (:mod:`._worker`) and to unpickle what it runs, and must
not import the executor's side with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._errors import DaskClusterError
    from ._executor import DaskExecutor

__all__ = ["DaskClusterError", "DaskExecutor"]

# Public name -> the module that defines it.
_HOMES = {
    "DaskClusterError": "executors._errors",
    "DaskExecutor": "._executor",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
