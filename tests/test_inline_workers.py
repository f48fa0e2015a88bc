"""Issue 26 on ``inline``: the caller's thread is the one worker, slot 0.

The shipped worker classes run on every backend that declares the flags;
these checks pin what is particular to running in the caller.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import executors
from executors.testing import worker_tasks

pytestmark = pytest.mark.timeout(120)


def test_a_task_is_worker_zero_with_one_state_for_the_executors_life() -> None:
    assert executors.worker_id() is None
    with executors.create(
        "inline", initializer=worker_tasks.fill_state, initargs=("model",)
    ) as ex:
        assert ex.submit(worker_tasks.read_state).result() == "model"
        first = ex.submit(worker_tasks.count_in_state).result()
        second = ex.submit(worker_tasks.count_in_state).result()
        assert first[0] == second[0] == 0
        assert second[3] == first[3] + 1
    # Outside the task, the caller is no worker again.
    assert executors.worker_id() is None


def test_the_finalizer_runs_once_at_shutdown(tmp_path: Path) -> None:
    ex = executors.create(
        "inline", finalizer=worker_tasks.write_finalized, finalargs=(str(tmp_path),)
    )
    ex.submit(worker_tasks.who).result()
    assert not list(tmp_path.iterdir())
    ex.shutdown()
    ex.shutdown()
    assert len(list(tmp_path.iterdir())) == 1


def test_a_failing_finalizer_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = executors.create(
        "inline", finalizer=worker_tasks.failing_finalizer, finalargs=("inline",)
    )
    with caplog.at_level(logging.ERROR, logger="executors.workers"):
        ex.shutdown()
    assert any("finalizer" in r.getMessage() for r in caplog.records)


def test_an_explicit_thread_cap_holds_while_open_and_is_undone() -> None:
    before = os.environ.get("OMP_NUM_THREADS")
    ex = executors.create("inline", threads_per_worker=1)
    variable, sizes = ex.submit(worker_tasks.thread_limits).result()
    assert variable == "1" and all(size == 1 for size in sizes)
    ex.shutdown()
    assert os.environ.get("OMP_NUM_THREADS") == before


def test_no_cap_by_default_in_the_callers_process() -> None:
    before = os.environ.get("OMP_NUM_THREADS")
    with executors.create("inline") as ex:
        ex.submit(worker_tasks.who).result()
        assert os.environ.get("OMP_NUM_THREADS") == before


def test_a_task_runs_an_executor_of_its_own() -> None:
    with executors.create("inline") as ex:
        assert ex.submit(worker_tasks.nested_sum, "thread", 10).result() == 55
