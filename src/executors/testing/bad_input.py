"""Bad input: every entry point rejects it with a clear error and stays usable.

Tables of wrong calls, the calls after shutdown, and random option sets
drawn by hypothesis (each either works or is refused with a message).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from . import tasks
from ._faults import (
    FaultBase,
)
from ._support import (
    BOUND,
    ExecutorFactory,
)

__all__ = [
    "OPTION_ERRORS",
    "BadInputContract",
]


BadCall = tuple[str, Callable[[Any], Any], type[Exception], str]


def _bad_option(
    method: str, option: str, value: Any, error: type[Exception]
) -> BadCall:
    """``method(tasks.identity, [1], option=value)``, refused with ``error``
    whose message names the option."""

    def call(ex: Any) -> Any:
        return getattr(ex, method)(tasks.identity, [1], **{option: value})

    return f"{method}({option}={value!r})", call, error, option


_BAD_CALLS: list[BadCall] = [
    ("submit(None)", lambda ex: ex.submit(None), TypeError, "callable"),
    ("submit(42)", lambda ex: ex.submit(42, 1), TypeError, "callable"),
    ("map(None)", lambda ex: ex.map(None, [1]), TypeError, "callable"),
    ("map_unordered(None)", lambda ex: ex.map_unordered(None, [1]), TypeError, ""),
    ("map(non-iterable)", lambda ex: ex.map(tasks.identity, 5), TypeError, ""),
    (
        "map_unordered(non-iterable)",
        lambda ex: ex.map_unordered(tasks.identity, 5, buffersize=2),
        TypeError,
        "",
    ),
    _bad_option("map", "chunksize", 0, ValueError),
    _bad_option("map", "chunksize", -1, ValueError),
    _bad_option("map", "chunksize", "2", TypeError),
    _bad_option("map", "chunksize", 1.5, TypeError),
    _bad_option("map", "chunksize", True, TypeError),
    _bad_option("map", "buffersize", 0, ValueError),
    _bad_option("map", "buffersize", "x", TypeError),
    _bad_option("map", "buffersize", 2.0, TypeError),
    _bad_option("map", "timeout", -1, ValueError),
    _bad_option("map", "timeout", "1", TypeError),
    _bad_option("map_unordered", "chunksize", 0, ValueError),
    _bad_option("map_unordered", "buffersize", -2, ValueError),
    _bad_option("map_unordered", "timeout", -0.5, ValueError),
]

_AFTER_SHUTDOWN: list[tuple[str, Callable[[Any], Any]]] = [
    ("submit", lambda ex: ex.submit(tasks.identity, 1)),
    ("map", lambda ex: ex.map(tasks.identity, [1, 2])),
    ("map lazy", lambda ex: ex.map(tasks.identity, [1, 2], buffersize=2)),
    ("map_unordered", lambda ex: ex.map_unordered(tasks.identity, [1, 2])),
]

# Values hypothesis tries for any option: right and wrong types, in and out
# of range. Callables are module-level so that they pickle by reference.
_OPTION_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        -1,
        0,
        1,
        2,
        2.5,
        "",
        "spawn",
        "forkserver",
        "not-a-thing",
        (),
        (1,),
        [1],
        {},
        tasks.noop,
        object(),
    ]
)
# Values that are right for the common options, so that combinations which
# should work are drawn often enough to be exercised too.
_GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "max_workers": st.sampled_from([None, 1, 2]),
    "initializer": st.sampled_from([None, tasks.noop]),
    "initargs": st.sampled_from([(), (1,)]),
    "mp_context": st.sampled_from([None, "spawn", "forkserver"]),
    "max_tasks_per_child": st.sampled_from([None, 1, 3]),
    "cloudpickle": st.booleans(),
}
_COMMON_OPTIONS = [
    "max_workers",
    "initializer",
    "initargs",
    "mp_context",
    "max_tasks_per_child",
    "cloudpickle",
    "no_such_option",
]
#: Clean rejections of a bad option.
OPTION_ERRORS = (TypeError, ValueError, LookupError)


def _option_names(cls: type) -> list[str]:
    params = inspect.signature(cls).parameters.values()
    own = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return sorted({*_COMMON_OPTIONS, *own})


def _run_bounded(fn: Callable[[], Any], bound: float) -> Any:
    """Run ``fn`` in a thread; fail the test if it does not return in time."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound)
    assert box, f"the call did not return within {bound:.0f}s: it hangs"
    status, value = box[0]
    if status == "raised":
        raise value
    return value


class BadInputContract(FaultBase):
    """Every entry point rejects bad input with a clear error and stays usable."""

    def test_every_entry_point_rejects_bad_input(
        self, executor: Any, observe: Callable[[str], None]
    ) -> None:
        problems: list[str] = []
        for name, call, kind, match in _BAD_CALLS:
            try:
                call(executor)
            except kind as exc:
                if not str(exc) or match not in str(exc):
                    problems.append(f"{name}: unclear message {str(exc)!r}")
            except Exception as exc:
                problems.append(f"{name}: raised {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{name}: did not raise {kind.__name__}")
            # Usable after every rejection, not only after the last one.
            fut = executor.submit(tasks.add, 1, 2)
            if fut.result(timeout=BOUND) != 3:
                problems.append(f"{name}: the executor is not usable afterwards")
        assert not problems, "\n".join(problems)
        observe(f"{len(_BAD_CALLS)} bad calls rejected")

    def test_every_entry_point_raises_after_shutdown(self, executor: Any) -> None:
        executor.shutdown(wait=True)
        for _name, call in _AFTER_SHUTDOWN:
            with pytest.raises(
                RuntimeError, match="cannot schedule new futures after shutdown"
            ):
                call(executor)
        executor.shutdown()  # still idempotent after the failed calls

    def test_random_options_work_or_raise_cleanly(
        self,
        executor: Any,
        make_executor: ExecutorFactory,
        hypothesis_examples: int | None,
    ) -> None:
        option_names = _option_names(type(executor))

        # Given inside the test, so the number of examples can come from a
        # fixture (see ContractBase.hypothesis_examples).
        @settings(
            max_examples=hypothesis_examples or 25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(data=st.data())
        def check(data: Any) -> None:
            names = data.draw(
                st.lists(st.sampled_from(option_names), max_size=4, unique=True),
                label="names",
            )
            options = {
                name: data.draw(
                    st.one_of(_GOOD_VALUES.get(name, st.nothing()), _OPTION_VALUES),
                    label=name,
                )
                for name in names
            }

            def attempt() -> str:
                try:
                    created = make_executor(**options)
                except OPTION_ERRORS as exc:
                    assert str(exc), f"{type(exc).__name__} without a message"
                    return "rejected"
                try:
                    fut = created.submit(tasks.add, 1, 2)
                    assert fut.result(timeout=BOUND) == 3
                finally:
                    created.shutdown(wait=True)
                return "works"

            event(_run_bounded(attempt, 3 * BOUND))

        check()
