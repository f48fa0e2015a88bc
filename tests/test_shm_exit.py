"""A worker that leaves right after its last task keeps its result's memory until it is read.

Shared memory from ``memfd_create`` goes with the last process holding it;
a worker recycled at ``max_tasks_per_child`` must wait until the caller has
taken its last result, or that result is lost (``FileNotFoundError`` when
the caller opens ``/proc/<pid>/fd/<n>``).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import executors

pytestmark = pytest.mark.timeout(240)


def _array(i: int) -> np.ndarray:
    return np.full(512 * 1024, i, dtype=np.float64)  # 4 MiB


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child: 3.11+")
@pytest.mark.parametrize("backend", ["process", "mp_pool", "queue"])
def test_every_result_of_a_worker_recycled_after_each_task_arrives(
    backend: str,
) -> None:
    with executors.create(backend, max_workers=2, max_tasks_per_child=1) as ex:
        results = list(ex.map(_array, range(40)))
    assert [float(r[0]) for r in results] == [float(i) for i in range(40)]
    assert all(r.flags.writeable for r in results)
