"""Send callables with cloudpickle and data with the standard pickler.

Lambdas, closures and functions defined in ``__main__`` or a notebook do not
pickle by reference, so every pickle-based pool rejects them. Wrapping only
the *callable* in :class:`PortableCallable` makes them travel by value with
cloudpickle, while arguments and results keep the fast standard pickler.
The cloudpickle bytes are cached per callable: a hot ``submit`` loop pays one
dictionary look-up, not one cloudpickle call per task.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PortableCallable", "portable"]

T = TypeVar("T")

# Enough for every distinct function a program maps over; the cache holds the
# callables strongly, so an id() can never be reused while it is cached.
_CACHE_SIZE = 256
_cache: OrderedDict[int, tuple[object, bytes]] = OrderedDict()
_cache_lock = threading.Lock()


def _dumps(fn: object) -> bytes:
    key = id(fn)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is fn:
            _cache.move_to_end(key)
            return hit[1]
    import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(fn)
    except Exception as exc:
        # cloudpickle's own message names the inner object that failed (a
        # lock, a socket); say which callable held it.
        raise pickle.PicklingError(
            f"cannot send the callable {fn!r} to a worker process: {exc}"
        ) from exc
    with _cache_lock:
        _cache[key] = (fn, data)
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def _loads(data: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


class PortableCallable(Generic[T]):
    """A callable that pickles its target with cloudpickle.

    Args:
        fn: The callable to run in a worker.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., T]) -> None:
        self.fn = fn

    def __call__(self, /, *args: Any, **kwargs: Any) -> T:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _rebuild, (_dumps(self.fn),)

    def __repr__(self) -> str:
        return f"PortableCallable({self.fn!r})"


def _rebuild(data: bytes) -> PortableCallable[Any]:
    return PortableCallable(_loads(data))


def portable(fn: Callable[..., T]) -> Callable[..., T]:
    """Return ``fn`` wrapped so that it survives pickling by value.

    Args:
        fn: Any callable.

    Returns:
        ``fn`` itself if it is already portable, else a :class:`PortableCallable`.
    """
    if isinstance(fn, PortableCallable):
        return fn
    return PortableCallable(fn)
