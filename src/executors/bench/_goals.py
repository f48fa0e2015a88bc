"""The project's performance goals, checked by every benchmark run.

The fixed goals are data, in ``goals.json`` beside this module: one row per
goal, with the figure it checks and its threshold. What is written here is
the rule that adds goals for every backend of a run (streaming memory, the
default map against the raw library at its best chunk size).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Goal", "goals_for"]

_GOALS_FILE = Path(__file__).with_name("goals.json")


@dataclass(frozen=True)
class Goal:
    """One of the project's performance goals, and the figure that checks it.

    Either a ratio (``target``'s ``metric`` over ``other``'s ``other_metric``)
    or an absolute figure (``other`` is None), compared with ``threshold``.
    ``area`` says what the row measures, for the reader of the report.
    """

    area: str
    text: str
    workload: str
    target: str
    metric: str
    op: str
    threshold: float
    other: str | None = None
    other_metric: str | None = None


@functools.cache
def _fixed_goals() -> tuple[Goal, ...]:
    with _GOALS_FILE.open(encoding="utf-8") as file:
        rows = json.load(file)["goals"]
    return tuple(Goal(**row) for row in rows)


def goals_for(names: Iterable[str], counterparts: dict[str, str | None]) -> list[Goal]:
    goals = list(_fixed_goals())
    for name in names:
        goals.append(
            Goal("streaming memory", f"{name} streaming: caller's RSS growth, MB",
                 "streaming", name, "rss_mb", "<=", 50.0)
        )  # fmt: skip
        raw = counterparts.get(name)
        if raw and raw.startswith("raw."):
            goals.append(
                Goal("map throughput vs best hand-tuned",
                     f"{name} map of no-ops, default vs {raw} at its best chunksize",
                     "tiny", name, "default", ">=", 0.8, raw, "best")
            )  # fmt: skip
    return goals
