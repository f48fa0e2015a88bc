"""The pool workloads: start-up, tiny tasks, round trip, classic, CPU, payload.

Each measures one target's shared, warmed-up session (see
:class:`._measure.Context`) and checks what it returned.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from typing import Any

from . import _tasks
from ._measure import Context, Outcome, check, repeat, timed
from ._targets import Unsupported

__all__ = [
    "run_classic",
    "run_cpu",
    "run_payload",
    "run_roundtrip",
    "run_share",
    "run_startup",
    "run_tiny",
    "run_tiny_large",
]

# Shortest time one sample of the tiny-task maps spans (see `_tiny`).
SAMPLE_SECONDS = 0.05


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
        check(value == 7, f"the first task returned {value!r}, expected 7")
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
            took, result = timed(lambda: session.map(_tasks.noop, items, chunksize))
            check(result == items, f"map(chunksize={chunksize}) returned wrong results")
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
        took, result = timed(lambda part=part: session.map(_tasks.noop, part, None))  # type: ignore[misc]
        check(result == part, "map returned wrong results")
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
    outcome.samples["default"] = repeat(
        config.repeats, config.budget / 2, lambda: rate(None)
    )
    by_size: dict[int, list[float]] = {}
    per_size = 1 if config.quick else max(1, config.repeats // 2)
    sizes = config.sweep(len(items)) if sweep else []
    if not sizes:
        return outcome
    for chunksize in sizes:
        by_size[chunksize] = repeat(
            per_size,
            config.budget / (2 * len(sizes)),
            lambda chunksize=chunksize: rate(chunksize),  # type: ignore[misc]
        )
    best = max(by_size, key=lambda chunksize: statistics.median(by_size[chunksize]))
    more = config.repeats - len(by_size[best])
    if more > 0 and not config.quick:
        # The winner is measured as often as the default, for its spread.
        by_size[best] += repeat(more, config.budget / 4, lambda: rate(best))
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
        check(session.call(_tasks.noop, i) == i, "submit().result() wrong value")
        if time.monotonic() > warm_until:
            break
    samples: list[float] = []
    deadline = time.monotonic() + config.budget
    for i in range(config.roundtrip_calls):
        began = time.perf_counter()
        value = session.call(_tasks.noop, i)
        samples.append((time.perf_counter() - began) * 1e6)
        check(value == i, f"submit(noop, {i}).result() returned {value!r}")
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
        took, result = timed(lambda: session.submit_all(_tasks.sleep_for, args))
        check(result == args, "the sleeping tasks returned wrong values")
        return took

    # Three at most: each takes seconds, and the spread of a sleep is small.
    repeats = 1 if config.quick else min(config.repeats, 3)
    walls = repeat(repeats, config.budget + ideal * repeats, measure)
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
        took, result = timed(lambda: session.map(_tasks.burn, args, None))
        check(
            len(result) == len(args) and all(v == expected for _, v in result),
            "the CPU-bound tasks returned wrong values",
        )
        worked = sum(seconds for seconds, _ in result)
        busy.append(100.0 * worked / (took * session.workers))
        return float(took)

    walls = repeat(config.repeats, config.budget, measure)
    return Outcome(
        samples={"seconds": walls, "busy": busy},
        params={"tasks": len(args), "loops": loops},
    )


# -- payload ---------------------------------------------------------------


def run_payload(ctx: Context) -> Outcome:
    """A map of identity over many arrays, then round trips of one array.

    The round trips (``submit(identity, array).result()``, one array of each
    size in ``payload_sizes_mb``) count the payload once per trip, in GB/s,
    and the caller's peak RSS is sampled during the largest. On the serial
    baseline they are a NumPy copy of the array instead: the machine's copy
    bandwidth, the limit row (a round trip needs two copies).
    """
    try:
        import numpy as np
    except ImportError:
        raise Unsupported('needs numpy: pip install "executors[all]"') from None
    config = ctx.config
    baseline = ctx.spec.kind == "baseline"
    session = None if baseline else ctx.session()
    outcome = _payload_map(np, session, config)
    if session is None:
        outcome.notes.append(
            "the limit: a NumPy copy of each array in one process (a round "
            "trip needs two copies)"
        )
    largest = max(config.payload_sizes_mb)
    for size in config.payload_sizes_mb:
        rates, peak = _trips(np, session, size, size == largest, config)
        outcome.samples[f"gbps_{size:g}"] = rates
        if peak:
            outcome.samples["peak_rss_mb"] = peak
    return outcome


def _trips(
    np: Any, session: Any, size: float, sample_rss: bool, config: Any
) -> tuple[list[float], list[float]]:
    """GB/s of round trips of one ``size`` MiB array (copies if no session)."""
    array = np.full(int(size * MEGABYTE / 8), 1.0)
    peak: list[float] = []

    def copy() -> float:
        took, copied = timed(array.copy)
        check(copied[-1] == 1.0, "the copy differs")
        return float(array.nbytes / took / 1e9)

    def trip() -> float:
        with _PeakRss(enabled=sample_rss) as rss:
            took, back = timed(lambda: session.call(_tasks.noop, array))
            check(
                back.shape == array.shape and back[0] == back[-1] == 1.0,
                "the array came back changed",
            )
            del back
        if rss.peak:
            peak.append(rss.peak)
        return float(array.nbytes / took / 1e9)

    if session is None:
        return repeat(config.repeats, config.budget, copy), peak
    session.call(_tasks.noop, array)  # the first trip sets things up
    return repeat(config.repeats, config.budget, trip), peak


MEGABYTE = 1 << 20


def _payload_map(np: Any, session: Any, config: Any) -> Outcome:
    length = int(config.payload_mb * 1e6 / 8)
    arrays = [np.full(length, float(i)) for i in range(config.payload_items)]
    megabytes = sum(a.nbytes for a in arrays) / 1e6
    shared: list[bool] = []

    def measure() -> float:
        if session is None:  # the limit: a copy of each
            took, result = timed(lambda: [a.copy() for a in arrays])
        else:
            took, result = timed(lambda: session.map(_tasks.noop, arrays, None))
        check(
            len(result) == len(arrays)
            and all(np.array_equal(a, b) for a, b in zip(arrays, result, strict=True)),
            "the arrays came back changed",
        )
        shared.append(result[0] is arrays[0])
        return float(megabytes / took)

    rates = repeat(config.repeats, config.budget, measure)
    outcome = Outcome(
        samples={"mb_per_s": rates},
        params={
            "arrays": len(arrays),
            "mb_each": config.payload_mb,
            "sizes_mb": list(config.payload_sizes_mb),
            "copied": not any(shared),
        },
    )
    if any(shared):
        outcome.notes.append("no copy: the tasks run in this process")
    return outcome


class _PeakRss:
    """The caller's peak resident memory (MB) while the block runs."""

    INTERVAL = 0.002

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm", "rb") as statm:
            while True:
                statm.seek(0)
                rss = int(statm.read().split()[1]) * page / MEGABYTE
                self.peak = max(self.peak, rss)
                if self._stop.wait(self.INTERVAL):
                    return

    def __enter__(self) -> _PeakRss:
        if self.enabled and os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


# -- share -----------------------------------------------------------------


def run_share(ctx: Context) -> Outcome:
    """Tasks that each read one shared array: a large one, then a tiny one.

    The handle is :class:`executors._share.Shared` (what ``share()``
    returns on a backend that declares shared memory). Each worker's unique
    memory (USS) is read before and after the large array's tasks; the
    first batch of each array is not timed.
    """
    try:
        import numpy as np
    except ImportError:
        raise Unsupported('needs numpy: pip install "executors[all]"') from None
    if ctx.spec.kind != "ours":
        raise Unsupported("no shared object in the raw library's API")
    session = ctx.session()
    executor = getattr(session, "executor", None)
    if executor is None or not executor.capabilities.shared_memory:
        raise Unsupported("the backend declares no shared memory")
    from .._share import Shared

    config = ctx.config
    tasks = config.share_tasks
    outcome = Outcome(params={"tasks": tasks, "mb": config.share_mb})
    for key, nbytes in (("large_s", int(config.share_mb * MEGABYTE)), ("tiny_s", 1024)):
        array = np.ones(nbytes // 8)
        handle = Shared(array)
        before = _uss(session) if key == "large_s" else {}
        expected = float(array[0] + array[len(array) // 2] + array[-1])

        def measure(handle: Shared = handle, expected: float = expected) -> float:
            took, sums = timed(
                lambda: session.submit_all(_tasks.read_shared, [handle] * tasks)
            )
            check(all(v == expected for v in sums), "a task read other data")
            return float(took)

        # One batch first, untimed, as the other workloads warm up: the
        # steady state is what a program that shares an object for many
        # tasks sees (each worker maps the segment at its first task).
        measure()
        outcome.samples[key] = repeat(config.repeats, config.budget, measure)
        if before:
            after = _uss(session)
            growth = [after[pid] - before[pid] for pid in after if pid in before]
            if growth:
                outcome.samples["uss_pct"] = [100.0 * max(growth) / array.nbytes]
        handle.release()
        del array
    return outcome


def _uss(session: Any) -> dict[int, int]:
    """Each worker's USS (as many as answer a few calls)."""
    found: dict[int, int] = {}
    for pid, uss in session.submit_all(_tasks.unique_memory, [None] * 8):
        found[pid] = uss
    return found
