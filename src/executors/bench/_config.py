"""The sizes of every workload, for a full run and for ``--quick``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Config", "make_config"]


@dataclass
class Config:
    """Everything a measurement subprocess needs to know, as plain data.

    Attributes:
        quick: Scaled-down sizes (``--quick``): figures are indicative only.
        workers: Workers per pool (``--workers``).
        repeats: Repeats of each measurement; the median is reported.
        rounds: Times every target is measured, one after the other, each
            round taking its share of ``repeats`` and ``budget``; the
            samples of all rounds are reported together.
        bound: Seconds one measurement may take before it is reported as
            hung and its processes are killed.
        budget: Seconds a measurement may spend repeating itself: a slow
            but live target gets fewer repeats (or fewer items) instead of
            being reported as hung.
        start_method: ``--start-method``, or None for the defaults.
        tiny_items: Items of the tiny-task map (20,000).
        tiny_large_items: Items of the large tiny-task map (200,000).
        chunksizes: The chunk sizes tried for "best chunksize".
        roundtrip_calls: ``submit(f, x).result()`` calls timed.
        startup_repeats: Pools started and shut down.
        classic_tasks: Tasks of the classic workload (five).
        classic_seconds: Each one sleeps this long (1 s).
        cpu_tasks: Tasks of the CPU-bound workload (eight).
        cpu_seconds: Each one's serial duration (0.25 s).
        cpu_loops: Loop count that takes ``cpu_seconds`` here (calibrated).
        payload_items: Arrays of the payload workload (twenty).
        payload_mb: Size of each array in MB (5).
        payload_sizes_mb: Sizes of the single arrays sent there and back in
            the payload's round trips, in MiB (1, 16, 128).
        share_mb: Size of the shared array of the share workload, MiB (256).
        share_tasks: Tasks that read it (100).
        stream_items: Items of the streaming generator (10,000,000).
        stream_buffersize: ``buffersize`` of the streaming map (1,000).
        recycle_tasks: Tasks of the recycle workload (2,000).
        recycle_task_seconds: Each one sleeps this long (1 ms).
        recycle_per_child: ``max_tasks_per_child`` of its recycling pool (25).
        stream_rss_cap_mb: Growth at which a streaming run is stopped, so a
            target that reads its whole input cannot exhaust the memory.
        func: ``--func module:callable``.
        inputs: ``--inputs module:iterable``.
        cwd: Directory the user's ``--func`` module is imported from.
    """

    quick: bool = False
    workers: int = 2
    repeats: int = 5
    rounds: int = 1
    bound: float = 300.0
    budget: float = 30.0
    start_method: str | None = None
    tiny_items: int = 20_000
    tiny_large_items: int = 200_000
    chunksizes: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    roundtrip_calls: int = 2_000
    startup_repeats: int = 5
    classic_tasks: int = 5
    classic_seconds: float = 1.0
    cpu_tasks: int = 8
    cpu_seconds: float = 0.25
    cpu_loops: int = 0
    payload_items: int = 20
    payload_mb: float = 5.0
    payload_sizes_mb: list[float] = field(default_factory=lambda: [1, 16, 128])
    share_mb: float = 256.0
    share_tasks: int = 100
    stream_items: int = 10_000_000
    stream_buffersize: int = 1_000
    stream_rss_cap_mb: float = 500.0
    recycle_tasks: int = 2_000
    recycle_task_seconds: float = 0.001
    recycle_per_child: int = 25
    func: str | None = None
    inputs: str | None = None
    cwd: str = "."

    def to_json(self) -> dict[str, Any]:
        """Return the configuration as plain JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        """Rebuild a configuration from :meth:`to_json` data."""
        return cls(**data)

    def one_round(self) -> Config:
        """The configuration of one of ``rounds`` rounds."""
        return dataclasses.replace(
            self,
            repeats=max(1, -(-self.repeats // self.rounds)),
            budget=self.budget / self.rounds,
        )

    def sweep(self, items: int) -> list[int]:
        """The chunk sizes to try on a map of ``items``.

        The fixed sizes, plus the two that split the input evenly: into four
        chunks per worker (the usual sweet spot) and one per worker.
        """
        sizes = {*self.chunksizes, items // (4 * self.workers), items // self.workers}
        return sorted(size for size in sizes if 1 <= size < items)


def make_config(*, quick: bool, **overrides: Any) -> Config:
    """Return the full-run configuration, or the ``--quick`` one.

    ``--quick`` keeps every workload and target but shrinks the sizes so the
    whole run takes well under a minute on two cores: its figures show the
    shape of the results, not numbers to quote.
    """
    config = Config()
    if quick:
        config = Config(
            quick=True,
            repeats=3,
            bound=30.0,
            budget=1.5,
            tiny_items=5_000,
            tiny_large_items=50_000,
            chunksizes=[],
            roundtrip_calls=200,
            startup_repeats=2,
            classic_seconds=0.1,
            cpu_seconds=0.02,
            payload_items=4,
            payload_sizes_mb=[1, 16],
            share_mb=16.0,
            share_tasks=20,
            stream_items=50_000,
            recycle_tasks=500,
        )
    clean = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(config, **clean)
