"""Send callables with cloudpickle and data with the standard pickler.

Lambdas, closures and functions defined in ``__main__`` or a notebook do not
pickle by reference, so every pickle-based pool rejects them. Wrapping only
the *callable* in :class:`PortableCallable` makes them travel by value with
cloudpickle, while arguments and results keep the fast standard pickler.

Three choices keep that safe:

* The code travels with its file name (cloudpickle writes
  ``<dynamic-code>``), so a worker's traceback names the script's file and
  line and shows the source line, as the stdlib pool does.
* The cloudpickle bytes are cached per callable, so a hot ``submit`` loop
  pays one dictionary look-up, not one cloudpickle call per task; the cache
  holds callables *weakly*, so it never keeps a finished task's callable
  (or the object a bound method belongs to) alive.
* An error names the callable by its qualified name and the types of its
  bound arguments, never their values: a ``functools.partial`` holding a
  password must not write it into a log.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import threading
import types
import weakref
from collections import ChainMap
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = [
    "PortableCallable",
    "describe_callable",
    "pickled_by_name",
    "portable",
    "unwrap",
]

T = TypeVar("T")

# Enough for every distinct function a program maps over. An entry lives
# only as long as its callable: a weak reference's callback removes it.
_CACHE_SIZE = 256
# id(callable) -> (weak reference to it, its cloudpickle bytes)
_cache: dict[int, tuple[weakref.ref[Any], bytes]] = {}
_cache_lock = threading.Lock()


def _code_with_filename(args: tuple[Any, ...], filename: str) -> types.CodeType:
    """Rebuild a code object from cloudpickle's arguments, with its file name."""
    return types.CodeType(*args).replace(co_filename=filename)


@functools.cache
def _pickler_class() -> type[pickle.Pickler]:
    import cloudpickle

    base_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]

    def reduce_code(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
        # cloudpickle replaces co_filename with "<dynamic-code>" to make its
        # bytes independent of where a notebook cell lives; a worker's
        # traceback then has no file and no source line. Put it back.
        constructor, args = base_reduce(code)
        if constructor is not types.CodeType:  # pragma: no cover - future cloudpickle
            return constructor, args
        return _code_with_filename, (args, code.co_filename)

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = ChainMap(
            {types.CodeType: reduce_code}, cloudpickle.Pickler.dispatch_table
        )

    return _Pickler


def _cloudpickle_dumps(fn: object) -> bytes:
    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    return buffer.getvalue()


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    # Called as the callable is freed, possibly while this thread holds
    # _cache_lock: no lock here (dict operations are atomic). A racing insert
    # for a new object at the same id may be dropped: a cache miss, no more.
    entry = _cache.get(key)
    if entry is not None and entry[0] is ref:
        _cache.pop(key, None)


def _dumps(fn: object) -> bytes:
    key = id(fn)
    hit = _cache.get(key)
    # The identity check makes a reused id() (the old callable is gone) a miss.
    if hit is not None and hit[0]() is fn:
        return hit[1]
    try:
        data = _cloudpickle_dumps(fn)
    except Exception as exc:
        # cloudpickle's own message names the inner object that failed (a
        # lock, a socket); say which callable held it, without its values.
        raise pickle.PicklingError(
            f"cannot send the callable {describe_callable(fn)} to a worker "
            f"process: {exc}"
        ) from exc
    try:
        ref = weakref.ref(fn, functools.partial(_forget, key))
    except TypeError:
        # Not weakly referenceable (a __slots__ instance): not cached, so
        # that nothing here holds it; it is pickled on every submit.
        return data
    with _cache_lock:
        _cache[key] = (ref, data)
        if len(_cache) > _CACHE_SIZE:
            _cache.pop(next(iter(_cache)), None)  # the oldest entry
    return data


def describe_callable(fn: object) -> str:
    """Name a callable for an error message, never showing argument values.

    A function is named by its module and qualified name; a bound method
    also by the type it is bound to; a ``functools.partial`` by its target
    and the *types* of its bound arguments (``password=<str>``); any other
    callable object by its type.

    Args:
        fn: Any callable.

    Returns:
        A one-line description safe to write to a log.
    """
    if isinstance(fn, functools.partial):
        parts = [describe_callable(fn.func)]
        parts += [f"<{type(arg).__qualname__}>" for arg in fn.args]
        parts += [
            f"{name}=<{type(value).__qualname__}>"
            for name, value in fn.keywords.items()
        ]
        return f"functools.partial({', '.join(parts)})"
    if isinstance(fn, types.MethodType):
        owner = type(fn.__self__)
        return (
            f"{describe_callable(fn.__func__)} bound to a "
            f"{owner.__module__}.{owner.__qualname__} object"
        )
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str) and isinstance(fn, (types.FunctionType, type)):
        return f"{fn.__module__}.{name}"
    if isinstance(name, str) and isinstance(
        fn, (types.BuiltinFunctionType, types.BuiltinMethodType)
    ):
        module = getattr(fn, "__module__", None)
        return f"{module}.{name}" if module else name
    kind = type(fn)
    return f"a {kind.__module__}.{kind.__qualname__} object"


# Worker side: the same callable arrives with every task; loading it once
# per process turns a cloudpickle.loads per task into a dict look-up.
_loaded: dict[bytes, Any] = {}


def _loads(data: bytes) -> Any:
    fn = _loaded.get(data)
    if fn is not None:
        return fn
    import cloudpickle

    fn = cloudpickle.loads(data)
    with _cache_lock:
        _loaded[data] = fn
        if len(_loaded) > _CACHE_SIZE:
            _loaded.pop(next(iter(_loaded)), None)
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


def pickled_by_name(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``'s target if pickle finds it by module and name, else ``fn``.

    For a :class:`PortableCallable` around a module-level function: pickle
    sends it by name just as cloudpickle would, and neither this process
    nor the worker then pays cloudpickle's import.
    """
    inner: Callable[..., T] = unwrap(fn)
    if inner is not fn and _found_by_name(inner):
        return inner
    return fn


def _found_by_name(fn: object) -> bool:
    if _BY_NAME.get(id(fn)) is fn:
        return True
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return False
    if module == "__main__" or "<" in qualname:
        return False
    found: object = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not fn:
        return False
    if len(_BY_NAME) >= _BY_NAME_SIZE:
        _BY_NAME.clear()
    # Held strongly, so an id is never reused while cached; these are
    # module-level functions, which live as long as their module anyway.
    _BY_NAME[id(fn)] = fn
    return True


_BY_NAME: dict[int, object] = {}
_BY_NAME_SIZE = 256


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
