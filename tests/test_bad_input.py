"""Bad input at every public entry point: a clear error, never a hang.

The executor-level entry points (``submit``, ``map``, ``map_unordered``
after and before ``shutdown``, random option combinations) are checked by
:class:`executors.testing.BadInputContract` on every backend; this module
adds the registry: :func:`executors.create` with unknown names, unsupported
options and wrong values for every common option.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import executors
from conftest import BACKENDS, backend_factory
from executors import _registry
from executors.testing import BadInputContract, tasks


class TestBadInput(BadInputContract):
    pass


def test_unknown_backend_is_a_lookup_error_listing_the_names() -> None:
    with pytest.raises(LookupError, match="no executors backend named 'nope'") as info:
        executors.create("nope")
    for name in ("process", "thread", "inline"):
        assert name in str(info.value)


def test_unknown_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_registry.ENV_VAR, "nope")
    with pytest.raises(LookupError, match="'nope'"):
        executors.create()


@pytest.mark.parametrize("name", [42, b"process", ["process"], 1.5])
def test_backend_name_of_the_wrong_type(name: Any) -> None:
    with pytest.raises(TypeError, match="backend must be a name"):
        executors.create(name)


def test_unsupported_option_names_the_option_and_the_backend(
    backend_name: str,
) -> None:
    backend_factory(backend_name)  # skips an unavailable backend
    with pytest.raises(TypeError, match="no_such_option") as info:
        executors.create(backend_name, no_such_option=1)
    assert repr(backend_name) in str(info.value)


# (option, value, exception, text the message must contain)
COMMON_BAD_OPTIONS: list[tuple[str, Any, type[Exception], str]] = [
    ("max_workers", 0, ValueError, "max_workers"),
    ("max_workers", -1, ValueError, "max_workers"),
    ("max_workers", "2", TypeError, "max_workers"),
    ("max_workers", 1.5, TypeError, "max_workers"),
    ("max_workers", True, TypeError, "max_workers"),
    ("initializer", 42, TypeError, "initializer"),
    ("initializer", "print", TypeError, "initializer"),
    ("initargs", [1], TypeError, "initargs"),
    ("initargs", None, TypeError, "initargs"),
    ("mp_context", "bogus", ValueError, "mp_context"),
    ("mp_context", 42, TypeError, "mp_context"),
    ("max_tasks_per_child", 0, ValueError, "max_tasks_per_child"),
    ("max_tasks_per_child", -2, ValueError, "max_tasks_per_child"),
    ("max_tasks_per_child", "1", TypeError, "max_tasks_per_child"),
    ("cloudpickle", "yes", TypeError, "cloudpickle"),
    ("cloudpickle", 1, TypeError, "cloudpickle"),
    ("max_pending", 0, ValueError, "max_pending"),
    ("max_pending", "1", TypeError, "max_pending"),
    ("max_pending", True, TypeError, "max_pending"),
]


@pytest.mark.parametrize(
    ("option", "value", "error", "text"),
    COMMON_BAD_OPTIONS,
    ids=[f"{o}={v!r}" for o, v, _, _ in COMMON_BAD_OPTIONS],
)
def test_common_option_with_a_bad_value(
    backend_name: str, option: str, value: Any, error: type[Exception], text: str
) -> None:
    make = backend_factory(backend_name)
    cls = _registry.backend_class(backend_name)
    if option not in inspect.signature(cls).parameters:
        pytest.skip(f"{backend_name!r} has no option {option!r}")
    options: dict[str, Any] = {option: value}
    if option == "initargs":
        options["initializer"] = tasks.noop
    try:
        created = make(**options)
    except error as exc:
        assert text in str(exc), f"the message does not name {text!r}: {exc}"
        return
    created.shutdown(wait=True)
    pytest.fail(f"{backend_name!r} accepted {option}={value!r}")


def test_every_backend_is_listed_with_its_capabilities() -> None:
    infos = {info.name: info for info in executors.list_backends()}
    assert set(BACKENDS) <= set(infos)
    for info in infos.values():
        if info.available:
            assert info.capabilities is not None
        else:
            assert info.install_hint or info.error
