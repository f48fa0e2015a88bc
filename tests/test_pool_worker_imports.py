"""A worker running a Pool's ``starmap`` task imports none of the caller's side.

``starmap`` wraps the function in a picklable class of ``executors.pool``,
which the worker unpickles: importing it must not bring in the pool, the
map's scheduling or the timer (see ``tests/test_worker_imports.py`` for the
executor's own tasks and chunks).
"""

from __future__ import annotations

import sys

import pytest

# Nothing of the library is imported at the top: the workers import this
# module to find the probe below.
pytestmark = pytest.mark.timeout(120)

CALLER_SIDE = frozenset(
    {
        "executors._base",
        "executors._callqueue",
        "executors._control",
        "executors._map",
        "executors._registry",
        "executors.pool._imap",
        "executors.pool._pool",
        "executors.pool._results",
        "executors.pool._unfinished",
    }
)


def executors_modules(*_: object) -> list[str]:
    return sorted(name for name in sys.modules if name.startswith("executors"))


@pytest.mark.parametrize("backend", ["process", "queue"])
def test_a_starmap_task_imports_only_the_starred_wrapper(backend: str) -> None:
    from executors import Pool

    # Workers that start fresh: forked ones inherit the caller's modules.
    with Pool(1, context="spawn", backend=backend) as pool:
        imported = set(pool.starmap(executors_modules, [(1, 2)])[0])
        pool.close()
        pool.join()
    assert not imported & CALLER_SIDE, sorted(imported & CALLER_SIDE)
    assert "executors.pool._starred" in imported
