"""The workloads: what is measured, in which unit, and how.

Each workload is a function of a :class:`Context` (one target, in a
measurement subprocess) that returns raw samples; the parent summarises them.
Every workload checks its results (the values, their order, their count), so
a fast but wrong target is reported as an error, never as a figure.
"""

from __future__ import annotations

import _thread
import gc
import hashlib
import importlib
import math
import os
import pickle
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _tasks
from ._config import Config
from ._targets import Session, TargetSpec, Unsupported, open_session

__all__ = [
    "WORKLOADS",
    "Context",
    "Metric",
    "Outcome",
    "Ratio",
    "WorkloadInfo",
    "WrongResult",
    "load_object",
]

# Shortest time one sample of the tiny-task maps spans (see `_tiny`).
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


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


def _repeat(
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


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# -- start-up --------------------------------------------------------------


def run_startup(ctx: Context) -> Outcome:
    config = ctx.config
    starts: list[float] = []
    stops: list[float] = []
    # Two at least: the first start in a fresh process is a cold start.
    repeats = max(2, config.startup_repeats)
    spent = time.monotonic()
    for i in range(repeats):
        session = ctx.fresh()
        began = time.perf_counter()
        session.start()
        value = session.call(_tasks.noop, 7)
        started = time.perf_counter()
        _check(value == 7, f"the first task returned {value!r}, expected 7")
        starts.append((started - began) * 1e3)
        last = i == repeats - 1 or (i >= 1 and time.monotonic() - spent > config.budget)
        if last and config.quick:
            # --quick keeps the last pool for the other workloads rather
            # than start one more (seconds, for a Dask cluster).
            ctx.adopt(session)
            break
        session.close()
        stops.append((time.perf_counter() - started) * 1e3)
        if last:
            break
    return Outcome(
        samples={"cold": starts[:1], "warm": starts[1:], "shutdown": stops},
        params={"repeats": len(starts)},
    )


# -- tiny tasks ------------------------------------------------------------


def _tiny(ctx: Context, wanted: int, sweep: bool) -> Outcome:
    config = ctx.config
    session = ctx.session()
    outcome = Outcome()
    items = list(range(wanted))

    def rate(chunksize: int | None) -> float:
        # One sample spans several maps when one takes a few milliseconds:
        # a single 5 ms map swings by a quarter with the scheduler's whims,
        # and the ratios between targets would swing with it.
        done, spent = 0, 0.0
        while True:
            took, result = _timed(lambda: session.map(_tasks.noop, items, chunksize))
            _check(
                result == items, f"map(chunksize={chunksize}) returned wrong results"
            )
            done += len(items)
            spent += took
            if spent >= SAMPLE_SECONDS:
                return done / spent

    # Grow the input four-fold at a time while the next size would fit the
    # allowance: a target with a high per-task cost (raw Dask runs ~500
    # tasks/s) measures fewer items rather than run for minutes, and since
    # chunked maps only get faster per item as the input grows, the estimate
    # never cuts a fast target short.
    # The whole workload stays near 1.25 x --budget: a quarter for one
    # repeat, half for the default settings, a half for the sweep (shared
    # by its sizes) and a quarter to repeat the winner.
    allowance = config.budget / 4
    size = min(wanted, 100)
    while size < wanted:
        part = items[:size]
        took, result = _timed(lambda part=part: session.map(_tasks.noop, part, None))  # type: ignore[misc]
        _check(result == part, "map returned wrong results")
        following = min(wanted, size * 4)
        if took / size * following > allowance:
            break
        size = following
    if size < wanted:
        items = items[:size]
        outcome.notes.append(
            f"{size:,} items instead of {wanted:,} (slow per task; --budget)"
        )
    outcome.params["items"] = len(items)
    outcome.samples["default"] = _repeat(
        config.repeats, config.budget / 2, lambda: rate(None)
    )
    by_size: dict[int, list[float]] = {}
    per_size = 1 if config.quick else max(1, config.repeats // 2)
    sizes = config.sweep(len(items)) if sweep else []
    if not sizes:
        return outcome
    for chunksize in sizes:
        by_size[chunksize] = _repeat(
            per_size,
            config.budget / (2 * len(sizes)),
            lambda chunksize=chunksize: rate(chunksize),  # type: ignore[misc]
        )
    best = max(by_size, key=lambda chunksize: statistics.median(by_size[chunksize]))
    more = config.repeats - len(by_size[best])
    if more > 0 and not config.quick:
        # The winner is measured as often as the default, for its spread.
        by_size[best] += _repeat(more, config.budget / 4, lambda: rate(best))
    outcome.samples["best"] = by_size[best]
    outcome.params["best_chunksize"] = best
    outcome.params["sweep"] = {
        str(size): statistics.median(values) for size, values in by_size.items()
    }
    return outcome


def run_tiny(ctx: Context) -> Outcome:
    return _tiny(ctx, ctx.config.tiny_items, sweep=True)


def run_tiny_large(ctx: Context) -> Outcome:
    return _tiny(ctx, ctx.config.tiny_large_items, sweep=False)


# -- round trip ------------------------------------------------------------


def run_roundtrip(ctx: Context) -> Outcome:
    config = ctx.config
    session = ctx.session()
    warm_until = time.monotonic() + config.budget / 10
    for i in range(min(20, config.roundtrip_calls)):
        _check(session.call(_tasks.noop, i) == i, "submit().result() wrong value")
        if time.monotonic() > warm_until:
            break
    samples: list[float] = []
    deadline = time.monotonic() + config.budget
    for i in range(config.roundtrip_calls):
        began = time.perf_counter()
        value = session.call(_tasks.noop, i)
        samples.append((time.perf_counter() - began) * 1e6)
        _check(value == i, f"submit(noop, {i}).result() returned {value!r}")
        if time.monotonic() > deadline:
            break
    return Outcome(samples={"us": samples}, params={"calls": len(samples)})


# -- the classic workload --------------------------------------------------


def run_classic(ctx: Context) -> Outcome:
    config = ctx.config
    session = ctx.session()
    seconds = config.classic_seconds
    args = [seconds] * config.classic_tasks
    ideal = math.ceil(config.classic_tasks / session.workers) * seconds

    def measure() -> float:
        took, result = _timed(lambda: session.submit_all(_tasks.sleep_for, args))
        _check(result == args, "the sleeping tasks returned wrong values")
        return took

    # Three at most: each takes seconds, and the spread of a sleep is small.
    repeats = 1 if config.quick else min(config.repeats, 3)
    walls = _repeat(repeats, config.budget + ideal * repeats, measure)
    return Outcome(
        samples={"seconds": walls, "overhead": [(w - ideal) * 1e3 for w in walls]},
        params={"ideal": ideal, "tasks": len(args), "sleep": seconds},
    )


# -- CPU-bound -------------------------------------------------------------


def run_cpu(ctx: Context) -> Outcome:
    config = ctx.config
    session = ctx.session()
    loops = config.cpu_loops
    expected = _tasks.burn_expected(loops)
    args = [loops] * config.cpu_tasks
    busy: list[float] = []

    def measure() -> float:
        took, result = _timed(lambda: session.map(_tasks.burn, args, None))
        _check(
            len(result) == len(args) and all(v == expected for _, v in result),
            "the CPU-bound tasks returned wrong values",
        )
        worked = sum(seconds for seconds, _ in result)
        busy.append(100.0 * worked / (took * session.workers))
        return float(took)

    walls = _repeat(config.repeats, config.budget, measure)
    return Outcome(
        samples={"seconds": walls, "busy": busy},
        params={"tasks": len(args), "loops": loops},
    )


# -- payload ---------------------------------------------------------------


def run_payload(ctx: Context) -> Outcome:
    try:
        import numpy as np
    except ImportError:
        raise Unsupported('needs numpy: pip install "executors[all]"') from None
    config = ctx.config
    session = ctx.session()
    length = int(config.payload_mb * 1e6 / 8)
    arrays = [np.full(length, float(i)) for i in range(config.payload_items)]
    megabytes = sum(a.nbytes for a in arrays) / 1e6
    shared: list[bool] = []

    def measure() -> float:
        took, result = _timed(lambda: session.map(_tasks.noop, arrays, None))
        _check(
            len(result) == len(arrays)
            and all(np.array_equal(a, b) for a, b in zip(arrays, result, strict=True)),
            "the arrays came back changed",
        )
        shared.append(result[0] is arrays[0])
        return float(megabytes / took)

    rates = _repeat(config.repeats, config.budget, measure)
    outcome = Outcome(
        samples={"mb_per_s": rates},
        params={
            "arrays": len(arrays),
            "mb_each": config.payload_mb,
            "copied": not any(shared),
        },
    )
    if any(shared):
        outcome.notes.append("no copy: the tasks run in this process")
    return outcome


# -- streaming -------------------------------------------------------------


def _current_rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _generate(n: int) -> Iterator[int]:
    # A generator (no len()), so nothing can size or copy it up front.
    yield from range(n)


class _MemoryWatch(threading.Thread):
    """Samples this process's RSS; flags when growth passes the cap."""

    def __init__(self, base: int, cap: float) -> None:
        super().__init__(daemon=True, name="bench-memory-watch")
        self.base = base
        self.cap = cap
        self.highest = base
        self.over = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            rss = _current_rss()
            if rss is None:
                return
            self.highest = max(self.highest, rss)
            if rss - self.base > self.cap and not self.over.is_set():
                self.over.set()
                # A map that reads its whole input may not yield anything
                # before memory runs out: stop it wherever it is.
                _thread.interrupt_main()


def run_streaming(ctx: Context) -> Outcome:
    config = ctx.config
    began = time.monotonic()
    session = ctx.session()
    # A full run streams 10,000,000 items, which takes minutes on a slow
    # target; past this limit it stops and reports the growth seen so far
    # (a bounded map's memory levels off within seconds; one that reads its
    # whole input trips the memory cap first). Well inside the bound, which
    # also counted the pool's start.
    limit = (
        config.budget if config.quick else min(config.budget * 4, config.bound * 0.6)
    )
    stop_at = time.monotonic() + min(
        limit, config.bound * 0.8 - (time.monotonic() - began)
    )
    total_items = config.stream_items
    gc.collect()
    base = _current_rss()
    base_peak = _peak_rss()
    if base is None or base_peak is None:
        raise Unsupported("cannot read this process's memory use here")
    cap = config.stream_rss_cap_mb * 1e6
    watch = _MemoryWatch(base, cap)
    watch.start()
    count = total = 0
    outcome = Outcome()
    started = time.perf_counter()
    results: Iterator[Any] = iter(())
    try:
        results = session.stream(
            _tasks.noop, _generate(total_items), config.stream_buffersize
        )
        for value in results:
            count += 1
            total += value
            if count % 256 == 0 and time.monotonic() > stop_at:
                break
    except KeyboardInterrupt:
        # Raised by the memory watch (this process has no terminal).
        if not watch.over.is_set():
            raise
    finally:
        took = time.perf_counter() - started
        watch.done.set()
        watch.join()
    close = getattr(results, "close", None)
    if close is not None and not watch.over.is_set():
        # Stopped early by the time budget: cancel what is still queued.
        close()
    # Results come in input order, 0, 1, 2...: their sum tells if any was
    # lost, repeated or wrong, however far the run went.
    _check(total == count * (count - 1) // 2, "streamed values are wrong")
    peak = _peak_rss() or 0
    highest = peak if peak > base_peak else watch.highest
    growth = max(0, highest - base) / 1e6
    outcome.samples = {"rss_mb": [growth], "items_per_s": [count / took]}
    outcome.params = {
        "items": count,
        "of": total_items,
        "buffersize": config.stream_buffersize,
    }
    if watch.over.is_set():
        outcome.abandon = True
        outcome.params["stopped"] = "memory"
        outcome.notes.append(
            f"stopped after {count:,} items: memory grew past "
            f"{config.stream_rss_cap_mb:g} MB"
        )
        return outcome
    if count < total_items:
        # Stopped by the time budget: the figure covers what ran.
        outcome.params["stopped"] = "time"
        outcome.notes.append(
            f"partial: {count:,} of {total_items:,} items in {took:.1f} s"
        )
        return outcome
    return outcome


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
        took, result = _timed(lambda: session.map(fn, items, None))
        _check(len(result) == len(items), "map returned the wrong number of results")
        digests.append(_digest(result))
        return float(took)

    walls = _repeat(config.repeats, config.budget, measure)
    _check(len(set(digests)) == 1, "results differ between repeats")
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
                f"{c.payload_mb:g} MB numpy arrays, there and back "
                "(MB/s, higher is better)"
            ),
            (Metric("mb_per_s", "round trip", "MB/s", True),),
            (Ratio("vs raw", "mb_per_s", "mb_per_s"),),
            run_payload,
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
