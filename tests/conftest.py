"""Runs the shipped conformance suite over every registered backend.

A backend whose extra is not installed shows up as *skipped*, with the pip
line that would install it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
