"""Sessions: the one small interface every target is driven through.

A workload is written once against :class:`Session` and measures
``executors.create("mp_pool")`` and a raw :class:`multiprocessing.pool.Pool`
with the same code. Our backends are reached through the public API only
(:func:`executors.create`, :class:`OursSession`); the raw libraries' sessions
live in :mod:`._raw_sessions`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._targets import TargetSpec, Unsupported

__all__ = ["OursSession", "Session", "open_session"]


class Session(ABC):
    """One pool of one target, driven by the workloads.

    ``start()`` creates the pool (importing its library on first use, so the
    first start in a fresh process is a true cold start); every other method
    runs work on it and returns plain results.
    """

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.workers = spec.workers

    @abstractmethod
    def start(self) -> None:
        """Create the pool (workers may start lazily, on the first task)."""

    @abstractmethod
    def close(self) -> None:
        """Release the pool and wait for its workers to exit."""

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """Run one task and wait for its result (the round trip)."""
        return self.submit_all(fn, [x])[0]

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        """Map over ``items``; ``chunksize=None`` means the library's default."""

    @abstractmethod
    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        """Start one task per argument at once, then wait for all of them."""

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        """Map lazily over a large iterable, holding a bounded amount of it."""
        raise Unsupported(f"{self.spec.name} has no bounded map")


class OursSession(Session):
    """One of our backends, through :func:`executors.create` only."""

    executor: Any = None

    def start(self) -> None:
        import executors

        options: dict[str, Any] = {"max_workers": self.workers}
        if self.spec.start_method is not None:
            try:
                self.executor = executors.create(
                    self.spec.name, mp_context=self.spec.start_method, **options
                )
                return
            except TypeError as exc:
                # A backend without processes (thread, inline, dask) has no
                # start method to choose; measure it with its defaults.
                if "mp_context" not in str(exc):
                    raise
        self.executor = executors.create(self.spec.name, **options)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.executor.submit(fn, x).result()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=chunksize))

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        futures = [self.executor.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        result: Iterator[Any] = self.executor.map(fn, items, buffersize=buffersize)
        return result


def open_session(spec: TargetSpec) -> Session:
    """Return an unstarted session for ``spec`` (call ``start()`` next)."""
    if spec.kind == "ours":
        return OursSession(spec)
    from ._raw_sessions import RAW_SESSIONS

    return RAW_SESSIONS[spec.name](spec)
