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

__all__ = ["PortableCallable", "portable", "unwrap"]

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


# Worker side: the same callable arrives with every task; loading it once
# per process turns a cloudpickle.loads per task into a dict look-up.
_loaded: OrderedDict[bytes, Any] = OrderedDict()


def _loads(data: bytes) -> Any:
    with _cache_lock:
        fn = _loaded.get(data)
        if fn is not None:
            _loaded.move_to_end(data)
            return fn
    import cloudpickle

    fn = cloudpickle.loads(data)
    with _cache_lock:
        _loaded[data] = fn
        if len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return fn


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


def unwrap(fn: Callable[..., T]) -> Callable[..., T]:
    """Return the target of a :class:`PortableCallable`, else ``fn`` itself.

    Workers call it before a loop over many items: the wrapper only matters
    while pickling.
    """
    return fn.fn if isinstance(fn, PortableCallable) else fn


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
