"""What certify runs: the behaviour classes, their topics, what each test needs.

Read by the command and by the pytest plugin in its child process; it
imports neither pytest nor the behaviour classes, so the command can
describe a run before anything heavy is loaded.
"""

from __future__ import annotations

import re

__all__ = [
    "FEATURES",
    "MODULE_TOPICS",
    "TOPICS",
    "contract_classes",
    "missing_feature_used",
    "requirements",
    "topic_of",
]

#: The topics of a scorecard, in the order the tests run and the page shows them.
TOPICS = [
    "submit",
    "map",
    "ordering",
    "shutdown",
    "callbacks",
    "references",
    "crashes",
    "pickling faults",
    "initializer",
    "bad input",
    "leaks",
    "Ctrl-C",
    "task control",
    "backpressure",
]

#: The topic of each module of the suite (see ``executors.testing``): a
#: module holds one topic's ordinary and fault classes side by side, so a
#: class gets its topic from where it lives. Ordering, pickling and Ctrl-C
#: tests are picked out of their module's topic by name (``topic_of``).
MODULE_TOPICS = {
    "submit": "submit",
    "map": "map",
    "shutdown": "shutdown",
    "callbacks": "callbacks",
    "references": "references",
    "crash": "crashes",
    "pickling": "pickling faults",
    "initializer": "initializer",
    "bad_input": "bad input",
    "leaks": "leaks",
    "task_control": "task control",
    "backpressure": "backpressure",
}


def _module_of(class_name: str) -> str:
    """The suite module an exported class lives in (``"submit"``), or ``""``."""
    from .. import _EXPORTS

    return _EXPORTS.get(class_name, "").lstrip(".")


def _class_topic(class_name: str) -> str | None:
    return MODULE_TOPICS.get(_module_of(class_name))


# Tests of map whose subject is the order of the results.
_ORDERING = re.compile(
    r"position|earlier_values|equals_builtin_map|unordered_map_yields"
)


def contract_classes() -> list[str]:
    """Names of the shipped behaviour classes certify runs, in topic order.

    Read from the package's exports, so a class added to the suite is run
    without a change here (under its own name as topic until it gets one).
    The ``Pool*`` classes test this library's ``Pool`` API, not an executor.
    """
    from .. import _EXPORTS

    names = [
        name
        for name in _EXPORTS
        if name.endswith("Contract") and not name.startswith("Pool")
    ]
    order = {topic: i for i, topic in enumerate(TOPICS)}
    return sorted(
        names, key=lambda name: order.get(_class_topic(name) or "", len(order))
    )


def topic_of(class_name: str, test_name: str) -> str:
    """The topic of a test, from its behaviour class and its name."""
    if "ctrl_c" in test_name:
        return "Ctrl-C"
    topic = _class_topic(class_name)
    if topic is None:
        return class_name.removesuffix("Contract")
    if topic == "map" and _ORDERING.search(test_name):
        return "ordering"
    if topic == "crashes" and "pickl" in test_name:
        return "pickling faults"
    return topic


#: Parts of this library's API that some tests use beyond the stdlib's
#: Executor, with why a target without them makes such a test not applicable.
FEATURES = {
    "protocol": (
        "checks the executors.Executor protocol (map_unordered, capabilities, "
        "backend), which a foreign executor does not implement"
    ),
    "map_unordered": "uses map_unordered(), which the target does not have",
    "map_buffersize": (
        "uses map(buffersize=), which the target's map does not take "
        "(the stdlib's takes it from Python 3.14)"
    ),
    "map_progress": "uses map(progress=True), which the target's map does not take",
    "error_classes": (
        "expects this library's error classes (WorkerCrashedError, the "
        "unpickling errors' messages), which a foreign executor does not raise"
    ),
    "initializer": "the target takes no initializer argument",
    "kill_task": "uses kill_task(), which the target does not have",
    "terminate_workers": (
        "uses terminate_workers() and kill_workers(), which the target does not have"
    ),
    "max_pending": (
        "creates the executor with max_pending=, this library's bound on "
        "unfinished submits, which the target does not take"
    ),
}

_TEST_NEEDS: dict[str, tuple[str, ...]] = {
    "test_is_a_stdlib_executor": ("protocol",),
    "test_buffersize_below_one_raises": ("map_buffersize",),
    "test_buffersize_bounds_items_read_ahead": ("map_buffersize",),
    "test_unordered_map_yields_every_result": ("map_unordered",),
    "test_unordered_map_is_bounded": ("map_unordered", "map_buffersize"),
    "test_unordered_map_yields_fast_results_first": ("map_unordered",),
    "test_empty_input": ("map_unordered",),
    "test_progress_bar_counts_items": ("map_progress",),
    "test_one_fault_one_exception_type": ("error_classes",),
    "test_kill_task_stops_one_running_task": ("kill_task", "terminate_workers"),
    "test_stopping_the_workers_resolves_every_future": ("terminate_workers",),
}

_CLASS_NEEDS: dict[str, tuple[str, ...]] = {
    "InitializerContract": ("initializer",),
    "InitializerFaultContract": ("initializer",),
    "BackpressureContract": ("max_pending",),
}


# The error a test that uses a missing extension fails with, by feature:
# a test the table above does not know yet (a new parametrization) is then
# still not applicable rather than failed, when the target lacks exactly
# what it used.
_MISSING_USE = {
    "map_unordered": re.compile(r"has no attribute 'map_unordered'"),
    "map_buffersize": re.compile(r"unexpected keyword argument 'buffersize'"),
    "map_progress": re.compile(r"unexpected keyword argument 'progress'"),
    "kill_task": re.compile(r"has no attribute 'kill_task'"),
    "max_pending": re.compile(r"unexpected keyword argument 'max_pending'"),
    "terminate_workers": re.compile(
        r"has no attribute '(terminate_workers|kill_workers)'"
    ),
}


def missing_feature_used(reason: str, features: dict[str, bool]) -> str | None:
    """The feature a failure shows the test used and the target lacks."""
    for name, pattern in _MISSING_USE.items():
        if not features.get(name, True) and pattern.search(reason):
            return name
    return None


def requirements(class_name: str, test_name: str) -> tuple[str, ...]:
    """The features of :data:`FEATURES` a test needs."""
    return _CLASS_NEEDS.get(class_name, ()) + _TEST_NEEDS.get(test_name, ())
