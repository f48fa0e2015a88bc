"""Runs the shipped conformance suite over every registered backend.

A backend whose extra is not installed shows up as *skipped*, with the pip
line that would install it.

It also checks that **no process of ours outlives the run**. The per-test
check of ``executors.testing`` sees only children; a worker re-parented to
init escapes it. So the controller puts a per-run token in the environment
(:data:`RUN_TOKEN_VARIABLE`) before anything starts, every process started
under the session inherits it (xdist workers, pools, fork servers, resource
trackers, Dask nannies, the programs the fault tests run), and at the end
the controller finds every process still carrying it, waits
:data:`ORPHAN_GRACE` seconds, kills the survivors and fails the session
with their list.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any

import psutil
import pytest

import executors
from executors import _registry

# Options each backend is tested with, beyond what a test passes itself.
# Two workers: this is a 2-core machine, and two is the smallest pool in
# which one worker can be busy while another is free.
TEST_OPTIONS: dict[str, dict[str, Any]] = {
    "inline": {},
    # Workers forked from a warm forkserver start in a fraction of spawn's
    # time; the suite starts a fresh cluster for most of its tests.
    "dask": {"max_workers": 2, "mp_context": "forkserver"},
}
DEFAULT_TEST_OPTIONS: dict[str, Any] = {"max_workers": 2}

BACKENDS = list(_registry._BUILTINS)


def backend_factory(name: str) -> Callable[..., Any]:
    """Return a factory for ``name``, or skip the test if it cannot load."""
    try:
        _registry.backend_class(name)
    except ImportError as exc:
        pytest.skip(f"backend {name!r} is not available: {exc}")
    defaults = TEST_OPTIONS.get(name, DEFAULT_TEST_OPTIONS)

    def make(**options: Any) -> Any:
        return executors.create(name, **{**defaults, **options})

    return make


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def executor_factory(backend_name: str) -> Callable[..., Any]:
    return backend_factory(backend_name)


# -- no process of the run survives it ----------------------------------------

#: The environment variable that marks every process started by this run.
RUN_TOKEN_VARIABLE = "EXECUTORS_TEST_RUN"
#: Seconds the processes of the run get to end after the last test (xdist
#: workers and their fork servers are still exiting).
ORPHAN_GRACE = 5.0
# multiprocessing's helpers of the controller itself (tests run in it
# without xdist): they end with it, as in any program, so they are not
# leftovers while it is still running.
_OWN_HELPERS = (
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "loky.backend.resource_tracker",
)
_token_key = pytest.StashKey[str]()


# Backends whose conformance and fault suites run in a module of their own,
# on one deployment the module shares (a Celery deployment takes a second
# to start; one per test would cost minutes): that module inherits the
# same behaviour classes.
SHARED_DEPLOYMENT_SUITES = {
    "celery": (
        "test_conformance.py",
        "test_faults.py",
        "test_pool.py",
        "test_backpressure.py",
    )
}


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    kept = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend_name") if callspec else None
        if item.path.name in SHARED_DEPLOYMENT_SUITES.get(str(backend), ()):
            continue
        kept.append(item)
    if len(kept) != len(items):
        items[:] = kept


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller marked it already
    token = uuid.uuid4().hex
    os.environ[RUN_TOKEN_VARIABLE] = token
    config.stash[_token_key] = token


def _marked_processes(token: str) -> list[psutil.Process]:
    """Live processes (zombies aside) whose environment carries ``token``."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.environ().get(RUN_TOKEN_VARIABLE) != token:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.ppid() == me and any(
                h in " ".join(proc.cmdline()) for h in _OWN_HELPERS
            ):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.append(proc)
    return found


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} (ppid {proc.ppid()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}: (gone while being described)"


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    # After every other implementation: xdist has stopped its workers.
    yield
    token = session.config.stash.get(_token_key, None)
    if token is None:
        return
    deadline = time.monotonic() + ORPHAN_GRACE
    left = _marked_processes(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _marked_processes(token)
    if not left:
        return
    described = [_describe(proc) for proc in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.sep("!", f"{len(left)} processes of this test run outlived it", red=True)
    for line in described:
        writer.line(line, red=True)
    writer.line("(all were killed; the run fails: a test or a backend leaks processes)")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
