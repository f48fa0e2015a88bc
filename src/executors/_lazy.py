"""Names a package imports on first use (PEP 562), written once.

A package whose modules a worker process imports (to unpickle what it
runs) must not import the caller's side with them: ``executors.testing``
(pytest, hypothesis), and the ``joblib`` and ``dask`` backend packages
(their executor modules). Each maps its public names to the modules that
define them and gets its ``__getattr__`` and ``__dir__`` from here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for names imported on first use.

    Args:
        package: The module's ``__name__``.
        homes: Public name -> the module that defines it (relative to
            ``package`` when it starts with a dot).
        public: The module's ``__all__``.
    """
    namespace = sys.modules[package].__dict__
    listed = frozenset(public)

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value  # the next look-up is a plain one
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *listed})

    return __getattr__, __dir__
