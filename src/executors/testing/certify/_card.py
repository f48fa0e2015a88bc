"""What a certify run produces: the scorecard, and what it was asked.

Plain data, written as JSON by ``--json`` and read back by ``compare`` and
the reports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Options",
    "Scorecard",
    "TestResult",
    "missing_dependencies",
    "topic_line",
    "versions",
]

_NEEDED = {
    "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
    "hypothesis": "hypothesis",
    "psutil": "psutil",
}


@dataclass
class Options:
    """What the command line asked for."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    given: dict[str, bool] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)
    timeout: float = 60.0
    max_time: float = 1800.0
    label: str = ""
    verbose: bool = False


@dataclass
class TestResult:
    """One test's outcome: passed, failed, n/a, hung or not run."""

    id: str
    topic: str
    outcome: str = "not run"
    reason: str = ""
    observed: str = ""
    duration: float = 0.0

    @property
    def name(self) -> str:
        """The test's name with its parameters, without module and class."""
        return self.id.rpartition("::")[2]


@dataclass
class Scorecard:
    """A whole run: what was certified, under which assumptions, and how it did."""

    target: str
    label: str
    executor_type: str = ""
    ours: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    capabilities: dict[str, list[Any]] = field(default_factory=dict)
    features: dict[str, bool] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    seconds: float = 0.0
    tests: list[TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""

    def counts(self, topic: str | None = None) -> dict[str, int]:
        """How many tests had each outcome (within ``topic``)."""
        counts = dict.fromkeys(("passed", "failed", "hung", "n/a", "not run"), 0)
        for test in self.tests:
            if topic is None or test.topic == topic:
                counts[test.outcome] += 1
        return counts

    @property
    def ok(self) -> bool:
        """Nothing applicable failed, hung or was left unrun (and tests ran)."""
        counts = self.counts()
        bad = counts["failed"] + counts["hung"] + counts["not run"]
        return not self.error and bad == 0 and bool(self.tests)

    def to_json(self) -> dict[str, Any]:
        """The JSON form, as ``--json`` writes it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scorecard:
        """Read what :meth:`to_json` wrote."""
        data = dict(data)
        tests = [TestResult(**t) for t in data.pop("tests", [])]
        return cls(**data, tests=tests)


def missing_dependencies() -> list[str]:
    """Distributions the run needs that are not installed."""
    return [
        dist for module, dist in _NEEDED.items() if not importlib.util.find_spec(module)
    ]


def versions(target: str) -> dict[str, str]:
    from importlib import metadata

    import executors

    versions = {
        "python": sys.version.split()[0],
        "executors": executors.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
    }
    top = target.partition(":")[0].split(".")[0] if ":" in target else ""
    for dist in {top, "loky", "pebble", "dask", "distributed", "joblib", "celery"}:
        if not dist or dist in versions:
            continue
        with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
            versions[dist] = metadata.version(dist)
    return dict(sorted(versions.items()))


def topic_line(topic: str, tests: list[TestResult]) -> str:
    """``"map  12 passed  1 failed  3 n/a"``: one topic's counts."""
    counts: dict[str, int] = {}
    for test in tests:
        counts[test.outcome] = counts.get(test.outcome, 0) + 1
    parts = [
        f"{counts[k]} {k}"
        for k in ("passed", "failed", "hung", "n/a", "not run")
        if counts.get(k)
    ]
    mark = "ok  " if not (counts.keys() & {"failed", "hung", "not run"}) else "FAIL"
    return f"{mark} {topic:<16} " + ", ".join(parts)
