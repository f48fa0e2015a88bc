"""What every workload shares: its figures, its outcome, its target, its checks.

Each workload is a function of a :class:`Context` (one target, in a
measurement subprocess) that returns raw samples in an :class:`Outcome`; the
parent summarises them. Every workload checks its results (the values, their
order, their count) with :func:`check`, so a fast but wrong target is
reported as an error, never as a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _tasks
from ._config import Config
from ._sessions import Session, open_session
from ._targets import TargetSpec

__all__ = [
    "Context",
    "Metric",
    "Outcome",
    "Ratio",
    "WrongResult",
    "check",
    "repeat",
    "timed",
]


SAMPLE_SECONDS = 0.05


class WrongResult(Exception):
    """A target returned results that differ from the expected ones."""


@dataclass(frozen=True)
class Metric:
    """One figure a workload reports.

    Attributes:
        key: Its key in the samples and the JSON.
        label: Column heading.
        unit: Unit shown in the heading.
        higher_is_better: Direction, for "vs best" and the plot.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Ratio:
    """A ratio column: our ``ours`` metric over the counterpart's ``raw`` one."""

    label: str
    ours: str
    raw: str


@dataclass
class Outcome:
    """What one workload measured on one target."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Set when the pool is left in a state not worth shutting down
    # gracefully (a streaming run stopped at the memory cap): the
    # subprocess exits and the parent kills what is left.
    abandon: bool = False


class Context:
    """One target inside a measurement subprocess.

    Args:
        spec: The target.
        config: The run's configuration.
    """

    def __init__(self, spec: TargetSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self._shared: Session | None = None

    def fresh(self) -> Session:
        """A new, unstarted session (for the start-up workload)."""
        return open_session(self.spec)

    def session(self) -> Session:
        """The session the workloads share, started and warmed up.

        Shared because that is how a pool is used (started once, given
        many jobs), and because a Dask cluster takes seconds to start.
        """
        if self._shared is None:
            session = open_session(self.spec)
            session.start()
            # Every worker has started and run a task before anything is
            # timed: pools that start workers on demand are measured warm.
            session.submit_all(_tasks.sleep_for, [0.01] * session.workers)
            self._shared = session
        return self._shared

    def adopt(self, session: Session) -> None:
        """Make a started ``session`` the shared one (warming it up)."""
        if self._shared is None:
            session.submit_all(_tasks.sleep_for, [0.01] * session.workers)
            self._shared = session
        else:
            session.close()

    def close(self) -> None:
        """Shut the shared session down, if one was started."""
        if self._shared is not None:
            session, self._shared = self._shared, None
            session.close()


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


def repeat(
    times: int, budget: float, measure: Callable[[], float], minimum: int = 1
) -> list[float]:
    """Run ``measure`` up to ``times`` times, fewer once ``budget`` is spent."""
    samples: list[float] = []
    start = time.monotonic()
    for _ in range(max(1, times)):
        samples.append(measure())
        if len(samples) >= minimum and time.monotonic() - start > budget:
            break
    return samples


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
