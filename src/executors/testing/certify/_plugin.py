"""The pytest plugin of a certify run, loaded in its child process.

It supplies the suite's one fixture, ``executor_factory``, from the target
named in the run's configuration (the file in ``EXECUTORS_CERTIFY_CONFIG``),
marks as not applicable the tests that need what the target lacks, runs the
tests topic by topic, and writes one JSON line per event to the file in
``EXECUTORS_CERTIFY_EVENTS``, which the command reads as the run goes:

* ``{"event": "collected", "tests": [{"id", "topic", "timeout"}, ...]}``
* ``{"event": "start", "id"}``
* ``{"event": "report", "id", "when", "outcome", "reason", "observed"}``
* ``{"event": "finished"}``

Tests already settled by an earlier child (the file in
``EXECUTORS_CERTIFY_DONE``, one id per line) are deselected: the command
starts a new child after a crash or a hang, and it goes on from there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from . import _suite
from ._target import make_factory

# Installed modules are not assertion-rewritten by default: without this, a
# failed bare `assert` in the suite reports only "AssertionError".
pytest.register_assert_rewrite(
    "executors.testing._support",
    "executors.testing._faults",
    *(f"executors.testing.{module}" for module in _suite.MODULE_TOPICS),
)

_CONFIG: dict[str, Any] = json.loads(
    Path(os.environ["EXECUTORS_CERTIFY_CONFIG"]).read_text()
)
_events: IO[str] | None = None
_TOPIC = pytest.StashKey[str]()


def _emit(event: dict[str, Any]) -> None:
    global _events
    if _events is None:
        path = os.environ["EXECUTORS_CERTIFY_EVENTS"]
        _events = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    _events.write(json.dumps(event) + "\n")
    _events.flush()


def _class_and_test(item: pytest.Item) -> tuple[str, str]:
    cls = getattr(item, "cls", None)
    base = next(
        (
            b.__name__
            for b in (cls.__mro__ if cls else ())
            if b.__name__.endswith("Contract") and b.__module__.startswith("executors.")
        ),
        "",
    )
    name = getattr(item, "originalname", None) or item.name.partition("[")[0]
    return base, name


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getoption("timeout") or 0)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    done_path = os.environ.get("EXECUTORS_CERTIFY_DONE")
    done = set(Path(done_path).read_text().split()) if done_path else set()
    order = {topic: i for i, topic in enumerate(_suite.TOPICS)}
    features: dict[str, bool] = _CONFIG["features"]
    topics = set(_CONFIG.get("topics") or ())
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        if item.nodeid in done:
            deselected.append(item)
            continue
        class_name, test_name = _class_and_test(item)
        item.stash[_TOPIC] = _suite.topic_of(class_name, test_name)
        if topics and item.stash[_TOPIC] not in topics:
            deselected.append(item)
            continue
        missing = [
            need
            for need in _suite.requirements(class_name, test_name)
            if not features.get(need, True)
        ]
        if missing:
            why = _suite.FEATURES[missing[0]]
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {why}"))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    # Topic by topic (stable: each class keeps its own order), so that each
    # topic's line can be printed as soon as its last test ends.
    kept.sort(key=lambda item: order.get(item.stash[_TOPIC], len(order)))
    items[:] = kept
    _emit(
        {
            "event": "collected",
            "tests": [
                {
                    "id": item.nodeid,
                    "topic": item.stash[_TOPIC],
                    "timeout": _timeout_of(item),
                }
                for item in kept
            ],
        }
    )


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _emit({"event": "start", "id": nodeid})


_SKIPPED_PREFIX = re.compile(r"^Skipped:\s*")


def one_line(report: pytest.TestReport) -> str:
    """The one-line reason of a failed or skipped report."""
    longrepr: Any = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # a skip: (path, line, message)
        text = str(longrepr[2])
        crash = None
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(crash.message) if crash is not None else str(longrepr)
    text = _SKIPPED_PREFIX.sub("", text.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith("did not match.") and len(lines) > 1:
        # pytest.raises(match=...): what the message was is the finding.
        line += " " + " ".join(lines[1:3])
    if crash is not None and re.fullmatch(r"[\w.]+", line):
        # A bare exception name ("TimeoutError"): say which line of the
        # suite raised it (the innermost frame is often the stdlib's).
        path, lineno = crash.path, crash.lineno
        entries = getattr(getattr(longrepr, "reprtraceback", None), "reprentries", [])
        for entry in reversed(entries):
            loc = getattr(entry, "reprfileloc", None)
            if loc is not None and "executors/testing/" in str(loc.path):
                path, lineno = str(loc.path), int(loc.lineno)
                break
        line += f" at {_source_line(path, lineno)}"
    return line if len(line) <= 240 else line[:237] + "..."


def _source_line(path: str, lineno: int) -> str:
    import linecache

    code = linecache.getline(path, lineno).strip()
    where = f"{Path(path).name}:{lineno}"
    return f"`{code}` ({where})" if code else where


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    observed = [str(v) for k, v in report.user_properties if k == "observed"]
    _emit(
        {
            "event": "report",
            "id": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "reason": one_line(report) if not report.passed else "",
            "observed": "; ".join(observed),
            "duration": round(report.duration, 3),
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    _emit({"event": "finished"})


class NoCancelFuturesTeardown:
    """For a target whose ``shutdown()`` takes no ``cancel_futures``.

    The suite's ``make_executor`` shuts every executor down at teardown with
    ``shutdown(wait=True, cancel_futures=True)``; on such a target every
    test would fail on that one missing parameter. Mixed in before the
    behaviour class, it keeps the same bounded teardown and leak check
    with ``shutdown(wait=True)`` alone; the tests that pass
    ``cancel_futures`` themselves still fail on it, as they should.
    """

    teardown_shutdown_options: ClassVar[dict[str, Any]] = {}


@pytest.fixture
def executor_factory() -> Callable[..., Any]:
    """Executors of the target under certification."""
    return make_factory(_CONFIG)


# Names in the bad-input tables of executors.testing.bad_input that use
# this library's map extensions; a target without them is not judged on them.
_EXTENSION_CALLS = {
    "map_unordered": re.compile(r"^map_unordered"),
    "map_buffersize": re.compile(r"buffersize|^map lazy$"),
}


@pytest.fixture(autouse=True)
def _bad_input_within_the_target_api(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Judge a foreign executor's bad-input handling on its own API only.

    The bad-input tests walk tables of calls, some of which use
    ``map_unordered`` or ``map(buffersize=)``; for a target without them
    those calls are left out of the tables for the test (and the scorecard
    says so), instead of failing the whole test on an ``AttributeError``.
    """
    from .. import bad_input

    cls = getattr(request, "cls", None)
    if cls is None or not issubclass(cls, bad_input.BadInputContract):
        yield
        return
    features: dict[str, bool] = _CONFIG["features"]
    missing = [name for name, ok in features.items() if not ok]
    patterns = [_EXTENSION_CALLS[name] for name in missing if name in _EXTENSION_CALLS]
    if patterns:

        def keep(entry: tuple[Any, ...]) -> bool:
            return not any(p.search(entry[0]) for p in patterns)

        left = [e for e in bad_input._BAD_CALLS if keep(e)]
        dropped = len(bad_input._BAD_CALLS) - len(left)
        monkeypatch.setattr(bad_input, "_BAD_CALLS", left)
        after = [e for e in bad_input._AFTER_SHUTDOWN if keep(e)]
        monkeypatch.setattr(bad_input, "_AFTER_SHUTDOWN", after)
        lacking = " and ".join(n for n in missing if n in _EXTENSION_CALLS)
        request.node.user_properties.append(
            ("observed", f"{dropped} calls left out (the target lacks {lacking})")
        )
    yield
