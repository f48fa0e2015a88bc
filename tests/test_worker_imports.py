"""A worker process imports worker code only.

The caller's machinery (the call queue, the map's scheduling, the task
control timer, the base class) has no business in a worker: importing it
costs every worker's start, and a worker that needs it is a sign that the
two sides of the wire are mixed in one module. Checked per process backend,
for a task and for a chunk of a map, with workers that start fresh (forked
workers inherit whatever the caller had imported, so they prove nothing).
"""

from __future__ import annotations

import sys

import pytest

# Nothing of the library is imported at the top: the workers import this
# module to find the probe below.
pytestmark = pytest.mark.timeout(120)

#: Modules of the caller's side.
CALLER_SIDE = frozenset(
    {
        "executors._base",
        "executors._callqueue",
        "executors._control",
        "executors._map",
    }
)

FRESH_START = {
    "process": {"mp_context": "spawn"},
    "mp_pool": {"mp_context": "spawn"},
    "queue": {"mp_context": "spawn"},
}


def executors_modules(_: object = None) -> list[str]:
    return sorted(name for name in sys.modules if name.startswith("executors"))


@pytest.mark.parametrize("backend", sorted(FRESH_START))
def test_a_worker_imports_no_caller_side_module(backend: str) -> None:
    import executors
    from executors import _registry

    try:
        _registry.backend_class(backend)
    except ImportError as exc:
        pytest.skip(f"{backend} is not installed: {exc}")

    with executors.create(backend, max_workers=2, **FRESH_START[backend]) as ex:
        after_task = set(ex.submit(executors_modules).result(timeout=60))
        after_chunks = set().union(
            *ex.map(executors_modules, range(8), chunksize=4, timeout=60)
        )
    assert not (after_task | after_chunks) & CALLER_SIDE, sorted(
        (after_task | after_chunks) & CALLER_SIDE
    )
