"""``max_pending=``: the bound on unfinished ``submit`` futures, on every backend.

:class:`~executors._base.BaseExecutor` wraps each backend's constructor with
:func:`taking_max_pending` (in ``__init_subclass__``), so that every backend
takes the option without declaring it, and holds a :class:`PendingSlots`
when it is set.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from ._options import check_int

__all__ = ["PendingSlots", "check_max_pending", "taking_max_pending"]


class PendingSlots:
    """``max_pending``: at most ``limit`` futures of ``submit`` unfinished.

    A slot is taken before a task is handed to the backend and given back
    by an internal done-callback, which runs in the thread that settles or
    cancels the future (never on the callback thread, which a user's
    callback blocked in ``submit`` could hold). The waiting is done with no
    lock of the executor held, so ``shutdown()`` can always come in and
    wake the waiters (:meth:`close`).
    """

    __slots__ = ("_cond", "_used", "closed", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self.closed = False
        self._cond = threading.Condition(threading.Lock())

    def try_take(self) -> bool:
        """Take a slot if one is free, without waiting."""
        with self._cond:
            if self._used < self.limit:
                self._used += 1
                return True
        return False

    def take(self) -> bool:
        """Wait for a free slot and take it; False if closed meanwhile.

        A ``KeyboardInterrupt`` in the waiting thread propagates at once
        (a lock wait is interruptible by signals on POSIX) and takes no
        slot.
        """
        with self._cond:
            while self._used >= self.limit:
                if self.closed:
                    return False
                self._cond.wait()
            self._used += 1
            return True

    def give_back(self, _future: object = None) -> None:
        with self._cond:
            self._used -= 1
            self._cond.notify()

    def close(self) -> None:
        """Wake every waiter for good: the executor is shutting down."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def check_max_pending(value: object) -> int | None:
    """Validate ``max_pending`` (``None``: unbounded, the default).

    Raises:
        TypeError: not an int.
        ValueError: ``"max_pending must be greater than 0"``.
    """
    return check_int(
        value, "max_pending", minimum=1, too_small="max_pending must be greater than 0"
    )


def taking_max_pending(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a backend's ``__init__`` so that it also takes ``max_pending=``.

    Checked before the backend starts anything; set once the constructor
    has returned. The wrapper's signature shows the option, so that
    ``create()``, which checks options against the constructor, takes it.
    """

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "max_pending" not in kwargs:
            # Left as it is: unbounded, or set by a subclass's wrapper
            # around this constructor.
            init(self, *args, **kwargs)
            return
        max_pending = check_max_pending(kwargs.pop("max_pending"))
        init(self, *args, **kwargs)
        self._limit_pending(max_pending)

    signature = inspect.signature(init)
    params = list(signature.parameters.values())
    option = inspect.Parameter(
        "max_pending", inspect.Parameter.KEYWORD_ONLY, default=None
    )
    # Before a **kwargs, which must come last.
    at = len(params)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        at -= 1
    params.insert(at, option)
    # A function takes any attribute; its __dict__ says so to mypy.
    __init__.__dict__["__signature__"] = signature.replace(parameters=params)
    __init__.__dict__["_takes_max_pending"] = True
    return __init__
