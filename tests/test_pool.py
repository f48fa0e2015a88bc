"""``executors.Pool`` on every backend (see executors.testing.pool).

The pools are built on the ``executor_factory`` fixture of ``conftest.py``,
so each behaviour class runs once per registered backend, with the same test
options as the conformance suite.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import executors
from _programs import run_python
from executors import Pool
from executors.testing import child_processes, wait_for_no_new_children
from executors.testing.pool import (
    PoolApplyContract,
    PoolCrashContract,
    PoolImapContract,
    PoolLifecycleContract,
    PoolMapContract,
    PoolStdlibErrorsContract,
)

pytestmark = pytest.mark.timeout(60)

# One pool per backend for the tests that leave their pool as they found it,
# as CPython's _TestPool shares one per class: starting pools is most of the
# cost (a second for joblib's loky workers, most of one for a Dask cluster).
_SHARED: dict[str, Pool] = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_shared_pools() -> Iterator[None]:
    before = child_processes()
    yield
    while _SHARED:
        _, pool = _SHARED.popitem()
        pool.terminate()
        pool.join()
    leftover = wait_for_no_new_children(before)
    assert not leftover, f"shared pools left child processes: {leftover}"


class SharedPool:
    @pytest.fixture
    def shared_pool(self, backend_name: str, pool_factory: Any) -> Pool:
        pool = _SHARED.get(backend_name)
        if pool is None:
            pool = _SHARED[backend_name] = pool_factory()
        return pool


class TestPoolApply(SharedPool, PoolApplyContract):
    pass


class TestPoolMap(SharedPool, PoolMapContract):
    pass


class TestPoolImap(SharedPool, PoolImapContract):
    pass


class TestPoolLifecycle(SharedPool, PoolLifecycleContract):
    pass


class TestPoolCrash(PoolCrashContract):
    pass


class TestPoolStdlibErrors(SharedPool, PoolStdlibErrorsContract):
    pass


# -- the Pool class itself, once ---------------------------------------------

METHODS = [
    "apply",
    "apply_async",
    "map",
    "map_async",
    "imap",
    "imap_unordered",
    "starmap",
    "starmap_async",
    "close",
    "terminate",
    "join",
]


@pytest.mark.parametrize("name", METHODS)
def test_signatures_match_the_stdlib(name: str) -> None:
    import inspect

    ours = inspect.signature(getattr(executors.Pool, name))
    theirs = inspect.signature(getattr(multiprocessing.pool.Pool, name))
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [
        p.default for p in theirs.parameters.values()
    ]


def test_constructor_keeps_the_stdlib_parameters_first() -> None:
    import inspect

    ours = list(inspect.signature(executors.Pool).parameters.values())
    theirs = list(inspect.signature(multiprocessing.pool.Pool).parameters.values())
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    assert ours[len(theirs)].name == "backend"
    assert ours[len(theirs)].kind is inspect.Parameter.KEYWORD_ONLY


def test_backend_comes_from_the_environment() -> None:
    script = textwrap.dedent(
        """
        from executors import Pool
        with Pool(3) as pool:
            print(pool.backend, pool.map(abs, [-1, -2]))
        """
    )
    done = run_python("-c", script, EXECUTORS_BACKEND="thread")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "thread [1, 2]"


def test_a_pool_left_in_a_global_lets_the_program_exit(backend_name: str) -> None:
    # CPython bpo-38744 / bpo-39360: a pool never closed, held by a global
    # object, hung or crashed the interpreter's exit.
    script = textwrap.dedent(
        """
        from executors import Pool
        problem = None
        class A:
            def __init__(self):
                self.pool = Pool(processes=1)
        def test():
            global problem
            problem = A()
            print(problem.pool.map(float, tuple(range(3))))
        if __name__ == "__main__":
            test()
        """
    )
    before = child_processes()
    done = run_python("-c", script, timeout=90, EXECUTORS_BACKEND=backend_name)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0.0, 1.0, 2.0]"
    assert not wait_for_no_new_children(before)


def test_an_option_the_backend_lacks_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_tasks_per_child"):
        executors.Pool(2, maxtasksperchild=3, backend="thread")
    with pytest.raises(TypeError, match="mp_context"):
        executors.Pool(
            2, context=multiprocessing.get_context("spawn"), backend="inline"
        )


def test_backend_options_pass_through() -> None:
    with executors.Pool(2, backend="thread", thread_name_prefix="classic") as pool:
        assert pool.apply(_thread_name).startswith("classic")


def _thread_name() -> str:
    import threading

    return threading.current_thread().name


# -- inline as a drop-in: it takes the pool size every backend takes ---------


def test_inline_runs_a_program_written_for_eight_workers() -> None:
    with executors.create("inline", max_workers=8) as ex:
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
        assert ex.submit(abs, -4).result() == 4
        assert ex.max_workers == 1
        assert "8 requested" in repr(ex)
        assert "one task at a time" in repr(ex)
    with Pool(8, backend="inline") as pool:
        assert pool.map(abs, [-5]) == [5]


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError)]
)
def test_inline_still_checks_max_workers(value: object, error: type) -> None:
    with pytest.raises(error, match="max_workers"):
        executors.create("inline", max_workers=value)


def test_inline_still_refuses_options_that_change_results() -> None:
    with pytest.raises(TypeError, match="mp_context"):
        executors.create("inline", max_workers=8, mp_context="spawn")
    with pytest.raises(TypeError, match="max_tasks_per_child"):
        executors.create("inline", max_workers=8, max_tasks_per_child=1)
