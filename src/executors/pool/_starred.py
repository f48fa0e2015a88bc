"""``starmap``'s task: the one part of the Pool that a worker unpickles.

It imports nothing of the library, so a worker that runs a ``starmap``
task loads this module and none of the caller's machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Starred"]


class Starred:
    """``fn(*args)`` for ``starmap``: a picklable stand-in for a lambda.

    Module-level so that process workers unpickle it by reference; the
    wrapped callable travels inside it as the backend sends any callable.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Starred, (self.fn,)
