"""Backend ``dask``: a Dask cluster, local by default, remote by address.

How it works, with the data flow and the modules: docs/backends/dask.md.

The names below are imported on first use: a worker imports this package
for its preload (:mod:`._worker`) and to unpickle what it runs, and must
not import the executor's side with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from ..._errors import DaskClusterError
    from ._executor import DaskExecutor

__all__ = ["DaskClusterError", "DaskExecutor"]

# Public name -> the module that defines it.
_HOMES = {
    "DaskClusterError": "executors._errors",
    "DaskExecutor": "._executor",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, __all__)
