"""Fixtures and inputs shared by the ``Pool`` behaviour classes."""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ...pool import Pool
from .._support import (
    BOUND,
    ContractBase,
    ExecutorFactory,
    wait_for_no_new_children,
)

__all__ = [
    "MaybeEncodingError",
    "PoolContractBase",
    "PoolFactory",
    "PoolRemoteTraceback",
    "SayWhen",
    "SizedButFailing",
    "failing_input",
    "square",
]


# A one-argument task that needs nothing but builtins in the worker: the
# workers never import this module (or pytest).
square = functools.partial(pow, exp=2)

PoolFactory = Callable[..., Pool]

# The stdlib's own classes, looked up by name: typeshed declares neither.
MaybeEncodingError: Any = vars(multiprocessing.pool)["MaybeEncodingError"]
PoolRemoteTraceback: Any = vars(multiprocessing.pool)["RemoteTraceback"]


class SayWhen(ValueError):
    """Raised by the caller's own input iterable, never by a task."""


def failing_input(total: int, when: int) -> Iterator[int]:
    """Yield ``0 .. total-1``, raising :class:`SayWhen` instead of ``when``."""
    if when == -1:
        raise SayWhen("the input failed before its first item")
    for i in range(total):
        if i == when:
            raise SayWhen(f"the input failed at item {i}")
        yield i


class SizedButFailing:
    """An input with a length whose iteration raises at once."""

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        raise SayWhen("sized input failed")

    def __len__(self) -> int:
        return 1


class PoolContractBase(ContractBase):
    """Fixtures: pools built on ``executor_factory``, terminated at teardown."""

    @pytest.fixture
    def pool_factory(self, executor_factory: ExecutorFactory) -> PoolFactory:
        """Build a Pool on the backend under test, with ``Pool``'s arguments."""

        def make(*args: Any, **kwargs: Any) -> Pool:
            return Pool(*args, backend=executor_factory, **kwargs)

        return make

    @pytest.fixture
    def make_pool(
        self,
        pool_factory: PoolFactory,
        leak_check_children: Callable[[], set[int]],
    ) -> Iterator[PoolFactory]:
        """Create pools; terminate and join each at teardown, check for leaks."""
        before = leak_check_children()
        created: list[Pool] = []

        def make(*args: Any, **kwargs: Any) -> Pool:
            pool = pool_factory(*args, **kwargs)
            created.append(pool)
            return pool

        yield make
        for pool in created:
            start = time.monotonic()
            pool.terminate()
            pool.join()
            took = time.monotonic() - start
            assert took < BOUND, f"terminate() + join() took {took:.1f}s"
        leftover = wait_for_no_new_children(before, children=leak_check_children)
        assert not leftover, f"child processes left after terminate: {leftover}"

    @pytest.fixture
    def pool(self, make_pool: PoolFactory) -> Pool:
        """A fresh pool with the backend's test defaults."""
        return make_pool()

    @pytest.fixture
    def shared_pool(self, make_pool: PoolFactory) -> Pool:
        """A pool for tests that leave it as they found it: fresh by default.

        A test module may override it to share one pool per backend between
        such tests, as the stdlib's own Pool tests share one per class:
        creating pools is most of the cost of these tests.
        """
        return make_pool()

    @staticmethod
    def require_pool(pool: Pool, *flags: str, value: bool = True) -> None:
        """Skip unless the pool's executor declares ``flags`` == ``value``."""
        ContractBase.require(pool.executor, *flags, value=value)
