"""Backend ``dask``: a Dask cluster, local by default, remote by address.

How it works, with the data flow and the modules: docs/backends/dask.md.
"""

from __future__ import annotations

from ..._errors import DaskClusterError
from ._executor import DaskExecutor

__all__ = ["DaskClusterError", "DaskExecutor"]
