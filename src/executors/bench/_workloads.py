"""The table of workloads: what ``--workloads`` names, and how each is shown.

The measurements themselves live in :mod:`._pool_workloads`,
:mod:`._streaming` and here (the user's own function).
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._config import Config
from ._measure import Context, Metric, Outcome, Ratio, check, repeat, timed
from ._pool_workloads import (
    run_classic,
    run_cpu,
    run_payload,
    run_roundtrip,
    run_share,
    run_startup,
    run_tiny,
    run_tiny_large,
)
from ._recycle import run_recycle
from ._streaming import run_streaming
from ._targets import Unsupported

__all__ = ["WORKLOADS", "WorkloadInfo", "load_object"]


# -- the user's own function -----------------------------------------------


def load_object(reference: str) -> Any:
    """Import ``"module:attribute"`` (the attribute may be dotted).

    Raises:
        ValueError: the reference has no ``:``.
        ImportError, AttributeError: it does not resolve.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected 'module:name', got {reference!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _digest(values: list[Any]) -> str | None:
    try:
        return hashlib.sha256(pickle.dumps(values, protocol=4)).hexdigest()[:16]
    except Exception:
        return None


def run_func(ctx: Context) -> Outcome:
    config = ctx.config
    if not config.func or not config.inputs:
        raise Unsupported("needs --func module:callable and --inputs module:iterable")
    fn = load_object(config.func)
    source = load_object(config.inputs)
    if callable(source) and not isinstance(source, Iterable):
        source = source()
    items = list(source)
    session = ctx.session()
    digests: list[str | None] = []

    def measure() -> float:
        took, result = timed(lambda: session.map(fn, items, None))
        check(len(result) == len(items), "map returned the wrong number of results")
        digests.append(_digest(result))
        return float(took)

    walls = repeat(config.repeats, config.budget, measure)
    check(len(set(digests)) == 1, "results differ between repeats")
    return Outcome(
        samples={
            "seconds": walls,
            "items_per_s": [len(items) / w for w in walls if w > 0],
        },
        params={"items": len(items), "digest": digests[0]},
    )


# -- the table of workloads ------------------------------------------------


@dataclass(frozen=True)
class WorkloadInfo:
    """One workload, as the CLI and the report see it.

    Attributes:
        name: Its name for ``--workloads``.
        title: Heading of its table (built from the configuration).
        metrics: The figures it reports, headline first.
        ratios: Ratio columns against the counterpart target.
        run: The measurement.
        fresh_process: Measured in its own subprocess (memory figures),
            except with ``--quick``, which saves the extra pool start.
        in_default: Part of a run without ``--workloads``.
        in_quick: Part of a ``--quick`` run without ``--workloads``.
    """

    name: str
    title: Callable[[Config], str]
    metrics: tuple[Metric, ...]
    ratios: tuple[Ratio, ...]
    run: Callable[[Context], Outcome]
    fresh_process: bool = False
    in_default: bool = True
    in_quick: bool = True

    @property
    def headline(self) -> Metric:
        """The figure plotted and ranked ("vs best")."""
        return self.metrics[0]


WORKLOADS: dict[str, WorkloadInfo] = {
    w.name: w
    for w in (
        WorkloadInfo(
            "startup",
            lambda c: (
                "Pool start to first result, and shutdown "
                f"(ms, lower is better; {c.startup_repeats} pools)"
            ),
            (
                Metric("warm", "start to 1st result", "ms", False),
                Metric("cold", "cold start", "ms", False),
                Metric("shutdown", "shutdown", "ms", False),
            ),
            (Ratio("start vs raw", "warm", "warm"),),
            run_startup,
        ),
        WorkloadInfo(
            "tiny",
            lambda c: (
                f"Tiny tasks: map of {c.tiny_items:,} no-ops "
                "(tasks/s, higher is better)"
            ),
            (
                Metric("default", "default settings", "tasks/s", True),
                Metric("best", "best chunksize", "tasks/s", True),
            ),
            (
                Ratio("default vs raw default", "default", "default"),
                Ratio("best vs raw best", "best", "best"),
                Ratio("default vs raw best", "default", "best"),
            ),
            run_tiny,
        ),
        WorkloadInfo(
            "tiny-large",
            lambda c: (
                f"Tiny tasks, large: map of {c.tiny_large_items:,} no-ops at "
                "default settings (tasks/s, higher is better)"
            ),
            (Metric("default", "default settings", "tasks/s", True),),
            (Ratio("vs raw", "default", "default"),),
            run_tiny_large,
            # Adds little to `tiny` at --quick sizes, and costs seconds.
            in_quick=False,
        ),
        WorkloadInfo(
            "roundtrip",
            lambda c: "Round trip: submit(f, x).result() (µs, lower is better)",
            (Metric("us", "median", "µs", False),),
            (Ratio("vs raw", "us", "us"),),
            run_roundtrip,
        ),
        WorkloadInfo(
            "classic",
            lambda c: (
                f"The classic workload: {c.classic_tasks} x "
                f"sleep({c.classic_seconds:g}) on {c.workers} workers "
                "(s, lower is better)"
            ),
            (
                Metric("seconds", "wall", "s", False),
                Metric("overhead", "over ideal", "ms", False),
            ),
            (Ratio("vs raw", "seconds", "seconds"),),
            run_classic,
        ),
        WorkloadInfo(
            "cpu",
            lambda c: (
                f"CPU-bound: {c.cpu_tasks} tasks of ~{c.cpu_seconds:g} s pure Python "
                "(s, lower is better)"
            ),
            (
                Metric("seconds", "wall", "s", False),
                Metric("busy", "workers busy", "%", True),
            ),
            (Ratio("vs raw", "seconds", "seconds"),),
            run_cpu,
        ),
        WorkloadInfo(
            "payload",
            lambda c: (
                f"Payload: map of identity over {c.payload_items} x "
                f"{c.payload_mb:g} MB numpy arrays, there and back (MB/s); then "
                "submit(identity, array).result() of one "
                + ", ".join(f"{size:g}" for size in c.payload_sizes_mb)
                + " MiB array (GB/s, payload once per round trip), and the "
                "caller's peak RSS during the largest (higher is better, RSS "
                "lower); serial: a NumPy copy, the limit"
            ),
            (
                Metric("mb_per_s", "map", "MB/s", True),
                *(
                    Metric(f"gbps_{size:g}", f"{size:g} MiB trip", "GB/s", True)
                    for size in (1, 16, 128)
                ),
                Metric("peak_rss_mb", "peak RSS", "MB", False),
            ),
            (
                Ratio("vs raw", "mb_per_s", "mb_per_s"),
                Ratio("128 MiB vs raw", "gbps_128", "gbps_128"),
            ),
            run_payload,
        ),
        WorkloadInfo(
            "share",
            lambda c: (
                f"Share: {c.share_tasks} tasks that each read one shared "
                f"{c.share_mb:g} MiB array, then one of 1 KB (s, lower is "
                "better), and the most any worker's unique memory grew, as a "
                "share of the array (%)"
            ),
            (
                Metric("large_s", "large", "s", False),
                Metric("tiny_s", "1 KB", "s", False),
                Metric("uss_pct", "worker USS growth", "%", False),
            ),
            (),
            run_share,
            in_quick=False,
        ),
        WorkloadInfo(
            "recycle",
            lambda c: (
                f"Recycling: {c.recycle_tasks:,} tasks of "
                f"{c.recycle_task_seconds * 1e3:g} ms on {c.workers} workers, "
                f"max_tasks_per_child={c.recycle_per_child} vs none, "
                "alternately (tasks/s, higher is better)"
            ),
            (
                Metric("recycling", "recycling", "tasks/s", True),
                Metric("plain", "no recycling", "tasks/s", True),
                Metric("ratio", "recycling / none", "x", True),
            ),
            (Ratio("recycling vs raw", "recycling", "recycling"),),
            run_recycle,
            # Seconds per run even when recycling is cheap.
            in_quick=False,
        ),
        WorkloadInfo(
            "streaming",
            lambda c: (
                f"Streaming: map(f, generator of {c.stream_items:,}, "
                f"buffersize={c.stream_buffersize:,}), caller's peak RSS growth "
                "(MB, lower is better)"
            ),
            (
                Metric("rss_mb", "RSS growth", "MB", False),
                Metric("items_per_s", "throughput", "items/s", True),
            ),
            (Ratio("vs raw", "rss_mb", "rss_mb"),),
            run_streaming,
            fresh_process=True,
        ),
        WorkloadInfo(
            "func",
            lambda c: f"Your function: map({c.func}, {c.inputs}) (s, lower is better)",
            (
                Metric("seconds", "wall", "s", False),
                Metric("items_per_s", "throughput", "items/s", True),
            ),
            (Ratio("vs raw", "seconds", "seconds"),),
            run_func,
            in_default=False,
        ),
    )
}
