"""Backend ``inline``: run each task inside ``submit``, in the caller.

The reference implementation of the contract and a debugging aid: switch a
program to ``EXECUTORS_BACKEND=inline`` and every task runs in the calling
thread, so breakpoints, profilers and plain tracebacks work.

How it differs (declared in :attr:`InlineExecutor.capabilities`): a future is
already finished when ``submit`` returns, so nothing is ever queued or
running beside the caller: ``cancel()`` always fails, ``map(timeout=)`` only
limits how long a lazy map waits between results, and ``shutdown(wait=False)``
has nothing to leave running.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .._base import BaseExecutor
from .._capabilities import Capabilities
from .._errors import InitializerFailedError
from .._options import check_initializer

__all__ = ["InlineExecutor"]

T = TypeVar("T")


class InlineExecutor(BaseExecutor):
    """Runs each task synchronously in the thread that submits it.

    Args:
        max_workers: ``None`` or ``1``; accepted so that code written for
            other backends runs unchanged, and rejected above 1 rather than
            silently ignored.
        initializer: Called once, in the caller, when the executor is
            created. If it raises, the executor is broken.
        initargs: Arguments for ``initializer``.
    """

    backend = "inline"
    capabilities = Capabilities(
        runs_concurrently=False, process_isolation=False, cancels_queued=False
    )

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is not None and (
            not isinstance(max_workers, int) or isinstance(max_workers, bool)
        ):
            raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_workers is not None and max_workers > 1:
            raise ValueError(
                "the 'inline' backend runs one task at a time in the caller; "
                f"max_workers must be 1 or None, got {max_workers}"
            )
        check_initializer(initializer, initargs)
        super().__init__(max_workers=1)
        self._init_error: BaseException | None = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                self._init_error = exc

    def _broken_error(self) -> BaseException | None:
        if self._init_error is None:
            return None
        error = InitializerFailedError(
            f"the initializer raised {type(self._init_error).__name__}: "
            f"{self._init_error}; the executor is not usable"
        )
        error.__cause__ = self._init_error
        return error

    def _submit(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[T]:
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            # Ctrl-C belongs to the caller, who is running the task.
            future.set_exception(exc)
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def _shutdown(self, wait: bool, cancel_futures: bool) -> None:
        return None
