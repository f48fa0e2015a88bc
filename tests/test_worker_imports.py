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
        "executors._call",
        "executors._callbridge",
        "executors._callcontrol",
        "executors._callqueue",
        "executors._chunkplan",
        "executors._control",
        "executors._hooks",
        "executors._map",
        "executors._pending",
        "executors._workers._loglisten",
        "executors._workers._settings",
    }
)

#: Modules of a backend's caller side, which its workers must not import
#: either: a worker that unpickles a function of a package whose
#: ``__init__`` imports the executor brings in the caller's whole side.
BACKEND_CALLER_SIDE = frozenset(
    {
        "executors.backends.mp_pool",
        "executors.backends._mp.watch",
        "executors.backends._mp.pool",
        "executors.backends._mp.reaping",
        "executors.backends.joblib._executor",
        "executors.backends.joblib._pools",
        "executors.backends.joblib._parallel",
        "executors.backends.joblib._trip",
        "executors.backends.dask._cluster",
        "executors.backends.dask._dispatch",
        "executors.backends.dask._executor",
        "executors.backends.queue._executor",
        "executors.backends.queue._pool",
        "executors.backends.queue._spawn",
        "executors.backends.queue._triage",
        "executors.backends.queue._manager",
        "executors.backends.queue._items",
        "executors.backends.queue._sendahead",
        "executors.backends.celery._executor",
        "executors.backends.celery._connection",
        "executors.backends.celery._deployment",
    }
)

#: Case -> (backend, options): workers that start as a fresh interpreter.
FRESH_START: dict[str, tuple[str, dict[str, object]]] = {
    "process": ("process", {"mp_context": "spawn"}),
    "mp_pool": ("mp_pool", {"mp_context": "spawn"}),
    "queue": ("queue", {"mp_context": "spawn"}),
    # loky's default start method, "loky", is fork then exec.
    "joblib-loky": ("joblib", {}),
    "joblib-multiprocessing": (
        "joblib",
        {"joblib_backend": "multiprocessing", "mp_context": "spawn"},
    ),
    # A LocalCluster's worker processes, with our preload.
    "dask": ("dask", {"mp_context": "spawn"}),
}


def executors_modules(_: object = None) -> list[str]:
    return sorted(name for name in sys.modules if name.startswith("executors"))


@pytest.mark.parametrize("case", sorted(FRESH_START))
def test_a_worker_imports_no_caller_side_module(case: str) -> None:
    import executors
    from executors import _registry

    backend, options = FRESH_START[case]
    try:
        _registry.backend_class(backend)
    except ImportError as exc:
        pytest.skip(f"{backend} is not installed: {exc}")

    with executors.create(backend, max_workers=2, **options) as ex:
        after_task = set(ex.submit(executors_modules).result(timeout=60))
        after_chunks = set().union(
            *ex.map(executors_modules, range(8), chunksize=4, timeout=60)
        )
    imported = (after_task | after_chunks) & (CALLER_SIDE | BACKEND_CALLER_SIDE)
    assert not imported, sorted(imported)
