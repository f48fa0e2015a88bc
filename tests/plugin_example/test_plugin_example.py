"""The example plugin next to this file passes the shipped conformance suite.

The plugin is a real package with its entry point declared in its own
``pyproject.toml``. Installing it with pip would change the environment every
other test runs in, so the tests make it visible the way an installation
does, and only for their own duration:

* its ``src`` directory goes on ``sys.path`` (what an install puts in
  ``site-packages``), and
* a ``<name>-<version>.dist-info`` directory, with the ``entry_points.txt``
  written from the ``[project.entry-points]`` table of its
  ``pyproject.toml``, goes in a temporary directory on ``sys.path``.

:mod:`importlib.metadata` then finds the entry point exactly as it finds an
installed distribution's, so ``executors.create("simple_threads")`` goes
through the real discovery path. ``monkeypatch`` undoes both at teardown,
and the registry's plugin cache is reset on the way in and out.

The whole suite (the contract classes and the fault-tolerance classes) runs
twice: once through the entry point, and once on the class imported
directly, which is what a plugin's own test module does (that one under
``-m slow``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import executors
from executors import _registry
from executors.testing import (
    BackpressureContract,
    BadInputContract,
    CallbackContract,
    CrashContract,
    InitializerContract,
    InitializerFaultContract,
    LeakContract,
    LogForwardingContract,
    MapContract,
    NestedExecutorContract,
    PicklingFaultContract,
    RecyclingContract,
    ReferenceContract,
    ShutdownContract,
    SubmitContract,
    TaskControlContract,
    ThreadLimitContract,
    WorkerCrashContract,
    WorkerFinalizerContract,
    WorkerIdentityContract,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

HERE = Path(__file__).resolve().parent
GROUP = "executors.backends"
MODULE = "executors_simple_threads"


def _project() -> dict[str, Any]:
    with (HERE / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _write_dist_info(site: Path, name: str, version: str, entry_points: str) -> None:
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for dist-info directories, and the source."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(HERE / "src"))
    monkeypatch.syspath_prepend(str(site))
    _registry._reset_plugins_for_tests()
    yield site
    _registry._reset_plugins_for_tests()


@pytest.fixture
def installed_plugin(site: Path) -> str:
    """Register the plugin's declared entry points; return its backend name."""
    project = _project()
    declared: dict[str, str] = project["entry-points"][GROUP]
    lines = "".join(f"{name} = {target}\n" for name, target in declared.items())
    _write_dist_info(site, project["name"], project["version"], f"[{GROUP}]\n{lines}")
    (name,) = declared
    return name


def test_the_declared_entry_point_names_the_class() -> None:
    declared = _project()["entry-points"][GROUP]
    assert declared == {"simple_threads": f"{MODULE}:SimpleThreadExecutor"}


def test_unknown_until_registered(site: Path) -> None:
    with pytest.raises(executors.BackendNotFoundError, match="simple_threads"):
        executors.create("simple_threads")


def test_create_finds_the_plugin_by_entry_point(installed_plugin: str) -> None:
    with executors.create(installed_plugin, max_workers=3) as ex:
        assert type(ex).__module__ == MODULE
        assert ex.backend == "simple_threads"
        assert ex.max_workers == 3
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    (info,) = [i for i in executors.list_backends() if i.name == installed_plugin]
    assert info.available
    assert not info.builtin
    assert info.capabilities == executors.Capabilities(
        process_isolation=False, task_control=True
    )
    assert info.summary.startswith("Runs tasks on a fixed set of threads")


def test_options_are_checked_by_create(installed_plugin: str) -> None:
    with pytest.raises(TypeError, match="does not support the option 'mp_context'"):
        executors.create(installed_plugin, mp_context="spawn")
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        executors.create(installed_plugin, max_workers=0)


def test_a_plugin_cannot_replace_a_builtin(installed_plugin: str, site: Path) -> None:
    _write_dist_info(
        site,
        "executors-impostor",
        "1.0",
        f"[{GROUP}]\nthread = {MODULE}:SimpleThreadExecutor\n",
    )
    _registry._reset_plugins_for_tests()
    with executors.create("thread", max_workers=1) as ex:
        assert type(ex).__module__ == "executors.backends.thread"


# -- the conformance suite, reused by overriding one fixture ---------------


# Through the entry point in the quick run; the class imported directly,
# as a plugin's own test module does, runs the same suite under -m slow.
@pytest.fixture(params=["entry point", pytest.param("class", marks=pytest.mark.slow)])
def executor_factory(
    request: pytest.FixtureRequest, site: Path
) -> Callable[..., executors.Executor]:
    if request.param == "entry point":
        name = request.getfixturevalue("installed_plugin")
        return lambda **options: executors.create(name, **{"max_workers": 2, **options})
    cls = importlib.import_module(MODULE).SimpleThreadExecutor
    return lambda **options: cls(**{"max_workers": 2, **options})


class TestSubmit(SubmitContract):
    pass


class TestMap(MapContract):
    pass


class TestShutdown(ShutdownContract):
    pass


class TestInitializer(InitializerContract):
    pass


class TestCrash(CrashContract):
    """Skipped as a whole: the plugin declares no process isolation."""


# The fault-tolerance classes; most of their cases need process isolation
# and skip themselves here, by capability.


class TestWorkerCrash(WorkerCrashContract):
    pass


class TestPicklingFault(PicklingFaultContract):
    pass


class TestInitializerFault(InitializerFaultContract):
    pass


class TestBadInput(BadInputContract):
    pass


class TestLeak(LeakContract):
    pass


class TestCallbacks(CallbackContract):
    pass


class TestReferences(ReferenceContract):
    pass


class TestTaskControl(TaskControlContract):
    pass


class TestBackpressure(BackpressureContract):
    pass


# The worker classes (issue 26): each selects itself by the capability flag
# it needs; the plugin declares none, so they show as skipped with why.


class TestWorkerIdentity(WorkerIdentityContract):
    pass


class TestWorkerFinalizer(WorkerFinalizerContract):
    pass


class TestLogForwarding(LogForwardingContract):
    pass


class TestRecycling(RecyclingContract):
    pass


class TestThreadLimit(ThreadLimitContract):
    pass


class TestNestedExecutor(NestedExecutorContract):
    pass
