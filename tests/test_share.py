"""``Executor.share(obj)``: one object placed once for many tasks, on every backend.

Where the workers are other processes and the backend declares
``capabilities.shared_memory``, the handle reaches each task as the object
itself, mapped read-only; on ``thread`` and ``inline`` ``share`` returns the
object; on ``dask`` it is Dask's scatter with broadcast; ``celery`` refuses,
naming the backend.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import executors
from executors.testing import tasks

pytestmark = pytest.mark.timeout(120)

BACKENDS = [
    "process",
    "mp_pool",
    "queue",
    "joblib",
    "thread",
    "inline",
    "dask",
    "celery",
]


def _sum_of(array: Any, scale: int) -> float:
    return float(array.sum()) * scale


def _first_writable(nested: dict[str, Any]) -> tuple[bool, int]:
    array = nested["deep"][0]
    return bool(array.flags.writeable), os.getpid()


def _create(backend: str) -> Any:
    try:
        return executors.create(backend, max_workers=2)
    except executors.BackendNotInstalledError as exc:  # pragma: no cover
        pytest.skip(str(exc))


@pytest.mark.parametrize("backend", BACKENDS)
def test_share_gives_every_task_the_object_or_refuses_by_name(backend: str) -> None:
    cls = executors.list_backends()
    info = {b.name: b for b in cls}[backend]
    caps = info.capabilities
    if backend == "celery":
        with (
            _create(backend) as ex,
            pytest.raises(
                NotImplementedError,
                match=f"the {backend!r} backend cannot share objects",
            ),
        ):
            ex.share(np.arange(10))
        return
    array = np.arange(1_000_000, dtype=np.float64)
    with _create(backend) as ex:
        handle = ex.share(array)
        if not caps.process_isolation:
            assert handle is array
        results = list(ex.map(_sum_of, [handle] * 6, range(6)))
        assert results == [float(array.sum()) * i for i in range(6)]
        # At any depth of an argument.
        writable, _pid = ex.submit(_first_writable, {"deep": [handle]}).result(60)
        if caps.shared_memory:
            assert not writable, "a shared array reached a task writable"


@pytest.mark.parametrize("backend", ["process", "mp_pool", "joblib"])
def test_a_released_handle_cannot_be_sent_and_shutdown_releases_the_rest(
    backend: str,
) -> None:
    with _create(backend) as ex:
        released = ex.share(np.ones(300_000))
        kept = ex.share(np.ones(300_000))
        assert ex.submit(_sum_of, released, 1).result(60) == 300_000.0
        released.release()
        assert released.released
        with pytest.raises(ValueError, match="was released; share"):
            ex.submit(_sum_of, released, 1).result(60)
        assert ex.submit(_sum_of, kept, 2).result(60) == 600_000.0
    assert kept.released


def test_share_after_shutdown_raises_the_stdlib_error() -> None:
    ex = _create("thread")
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.share(1)


def test_a_small_shared_object_reaches_a_task_too() -> None:
    with _create("process") as ex:
        handle = ex.share({"model": "weights"})
        assert ex.submit(tasks.identity, handle).result(60) == {"model": "weights"}


def test_a_released_dask_handle_cannot_be_sent_and_shutdown_releases_the_rest() -> None:
    with _create("dask") as ex:
        released = ex.share(np.ones(1000))
        kept = ex.share(np.ones(1000))
        assert ex.submit(_sum_of, released, 1).result(60) == 1000.0
        released.release()
        with pytest.raises(ValueError, match="was released; share"):
            ex.submit(_sum_of, released, 1).result(60)
        assert ex.submit(_sum_of, kept, 2).result(60) == 2000.0
    assert kept.released


def test_a_dask_task_depends_on_the_shared_objects_it_uses() -> None:
    # The broadcast may miss a worker (one that joined, or restarted, since;
    # under load one of two): a task that read the object from its worker's
    # memory and fetched it from inside the task otherwise, could wait
    # forever in that fetch. As a Dask dependency, Dask puts the data on
    # the worker before the task runs.
    with _create("dask") as ex:
        handle = ex.share(np.ones(1000))
        other = ex.share(np.ones(10))
        future = ex.submit(_sum_of, handle, 1)
        assert future.result(60) == 1000.0
        runtime = ex._manager.runtime

        def dependencies(dask_scheduler: Any) -> list[list[str]]:
            return [
                sorted(str(dep.key) for dep in task.dependencies)
                for task in dask_scheduler.tasks.values()
                if str(task.key).startswith("_sum_of")
            ]

        found = runtime.client.run_on_scheduler(dependencies)
        assert found == [[str(handle.key)]], found
        assert other.key != handle.key
