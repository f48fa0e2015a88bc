"""The whole conformance and fault suites on the ``celery`` backend.

A private deployment takes a second or more to start (a Redis server, then
a ``celery worker`` importing Celery and forking its pool), too slow for one
per test. So the suites run on one deployment shared by this module, the
very :class:`~executors.backends.celery._deployment.LocalDeployment` that
``create("celery")`` starts, reached the way an existing deployment is
(``broker=``): every test still gets a fresh executor, with its own call
queue, result subscription and futures. Tests that need the private mode's
own options (``initializer``, ``max_tasks_per_child``) get a private
deployment of their own.

The shared deployment survives every test: a crashed pool process is
replaced by the worker, and a test that stops running tasks (Ctrl-C)
revokes them with ``terminate=True``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import executors
from executors.testing import (
    BadInputContract,
    CallbackContract,
    CrashContract,
    InitializerContract,
    InitializerFaultContract,
    MapContract,
    PicklingFaultContract,
    ReferenceContract,
    ShutdownContract,
    ShutdownFaultContract,
    SubmitContract,
    WorkerCrashContract,
)
from executors.testing._support import BOUND, ExecutorFactory, child_processes

pytest.importorskip("celery")
pytest.importorskip("redis")

from executors.backends.celery._deployment import (
    QUEUE,
    LocalDeployment,
)

# What only a private deployment takes.
_PRIVATE_OPTIONS = {"initializer", "initargs", "max_tasks_per_child"}


@pytest.fixture(scope="module")
def deployment() -> Iterator[LocalDeployment]:
    started = LocalDeployment(2)
    started.start()
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def _not_shared(deployment: LocalDeployment) -> set[int]:
    """Our descendants, less the shared deployment's (the module's own)."""
    assert deployment.worker is not None and deployment.redis is not None
    shared = {deployment.worker.pid, deployment.redis.pid}
    pids = set()
    for pid in child_processes():
        try:
            lineage = {pid} | {p.pid for p in psutil.Process(pid).parents()}
        except psutil.Error:
            continue
        if not lineage & shared:
            pids.add(pid)
    return pids


class _Shared:
    @pytest.fixture
    def make_executor(
        self, executor_factory: ExecutorFactory, deployment: LocalDeployment
    ) -> Iterator[ExecutorFactory]:
        """As the suite's, but the shared deployment's pool may replace
        processes (a test crashed one): those are not this test's leftovers."""
        before = _not_shared(deployment)
        created: list[Any] = []

        def make(**options: Any) -> Any:
            executor = executor_factory(**options)
            created.append(executor)
            return executor

        yield make
        for executor in created:
            start = time.monotonic()
            executor.shutdown(wait=True, cancel_futures=True)
            took = time.monotonic() - start
            assert took < BOUND, f"shutdown took {took:.1f}s"
        deadline = time.monotonic() + BOUND
        while (leftover := _not_shared(deployment) - before) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert not leftover, f"child processes left after shutdown: {sorted(leftover)}"

    @pytest.fixture
    def executor_factory(self, deployment: LocalDeployment) -> ExecutorFactory:
        def make(**options: Any) -> Any:
            if _PRIVATE_OPTIONS & set(options):
                return executors.create("celery", **{"max_workers": 2, **options})
            return executors.create(
                "celery",
                **{
                    "max_workers": 2,
                    "broker": deployment.url,
                    "backend": deployment.url,
                    "queue": QUEUE,
                    **options,
                },
            )

        return make


class TestSubmit(_Shared, SubmitContract):
    pass


class TestMap(_Shared, MapContract):
    pass


class TestShutdown(_Shared, ShutdownContract):
    pass


class TestInitializer(_Shared, InitializerContract):
    pass


class TestCrash(_Shared, CrashContract):
    pass


class TestCallbacks(_Shared, CallbackContract):
    pass


class TestReferences(_Shared, ReferenceContract):
    pass


class TestWorkerCrash(_Shared, WorkerCrashContract):
    pass


class TestPicklingFault(_Shared, PicklingFaultContract):
    pass


class TestInitializerFault(_Shared, InitializerFaultContract):
    pass


class TestShutdownFault(_Shared, ShutdownFaultContract):
    pass


class TestBadInput(_Shared, BadInputContract):
    pass
