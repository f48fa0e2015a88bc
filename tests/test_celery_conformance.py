"""The whole conformance and fault suites on the ``celery`` backend.

A private deployment takes a second or more to start (a Redis server, then
a ``celery worker`` importing Celery and forking its pool), too slow for one
per test. So the suites run on one deployment shared by this module, the
very :class:`~executors.backends.celery._deployment.LocalDeployment` that
``create("celery")`` starts, reached the way an existing deployment is
(``broker=``): every test still gets a fresh executor, with its own call
queue, result subscription and futures. Tests that need the private mode's
own options (``initializer``, ``max_tasks_per_child``) get a private
deployment of their own. The ``executors.Pool`` behaviour classes run here
too, on pools built on the same executors (``tests/test_pool.py`` leaves
celery out).

The shared deployment survives every test: a crashed pool process is
replaced by the worker, and a test that stops running tasks (Ctrl-C)
revokes them with ``terminate=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import executors
from executors.testing import (
    BackpressureContract,
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
    TaskControlContract,
    WorkerCrashContract,
)
from executors.testing._support import ExecutorFactory, child_processes
from executors.testing.pool import (
    PoolApplyContract,
    PoolCrashContract,
    PoolImapContract,
    PoolLifecycleContract,
    PoolMapContract,
    PoolStdlibErrorsContract,
)

pytest.importorskip("celery")
pytest.importorskip("redis")
from executors.backends.celery._deployment import (
    QUEUE,
    LocalDeployment,
)

#: The backend column these tests fill in docs/semantics.md.
SEMANTICS_BACKEND = "celery"

# What only a private deployment takes.
_PRIVATE_OPTIONS = {
    "initializer",
    "initargs",
    "max_tasks_per_child",
    "redis_max_memory",
}


@pytest.fixture(autouse=True)
def _no_folder_left(no_celery_folder_left: None) -> None:
    """No private deployment of a test outlives it, failed or not (the
    shared one, made before, is the module's)."""


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
    def leak_check_children(
        self, deployment: LocalDeployment
    ) -> Callable[[], set[int]]:
        """The suite's leak checks leave the shared deployment out: its pool
        may replace processes (a test crashed one), not this test's leftovers."""
        return lambda: _not_shared(deployment)

    @pytest.fixture
    def executor_factory(self, deployment: LocalDeployment) -> ExecutorFactory:
        return _factory(deployment)


def _factory(deployment: LocalDeployment) -> ExecutorFactory:
    """Executors on the shared deployment; on a private one if they must."""

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
    @pytest.fixture
    def executor_factory(self, deployment: LocalDeployment) -> ExecutorFactory:
        """As the module's, with one rewrite for the random options test.

        A queue that no worker consumes is valid (an operator may start its
        workers later) and leaves the futures pending, as documented: the
        test cannot tell that from a hang. So a queue name it draws (or the
        app's default, ``None``) becomes the one the shared worker consumes;
        a queue of the wrong type or empty still reaches the backend.
        """
        shared = _factory(deployment)

        def make(**options: Any) -> Any:
            queue = options.get("queue", QUEUE)
            if queue is None or (isinstance(queue, str) and queue):
                options["queue"] = QUEUE
            return shared(**options)

        return make


class TestBackpressure(_Shared, BackpressureContract):
    pass


class TestTaskControl(_Shared, TaskControlContract):
    """On the shared deployment, reached as an existing one: a timeout or
    kill_task() revokes the task with SIGKILL, and terminate_workers()
    revokes this executor's running tasks, never the module's workers."""


# -- executors.Pool on the shared deployment -----------------------------------


class TestPoolApply(_Shared, PoolApplyContract):
    pass


class TestPoolMap(_Shared, PoolMapContract):
    pass


class TestPoolImap(_Shared, PoolImapContract):
    pass


class TestPoolLifecycle(_Shared, PoolLifecycleContract):
    pass


class TestPoolCrash(_Shared, PoolCrashContract):
    pass


class TestPoolStdlibErrors(_Shared, PoolStdlibErrorsContract):
    pass
