"""The streaming workload: a lazy map over a large generator, and its memory.

It watches the measuring process's resident memory while the map runs, and
stops the map where it is if memory grows past the cap (a map that reads its
whole input may yield nothing before memory runs out).
"""

from __future__ import annotations

import _thread
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import _tasks
from ._measure import Context, Outcome, check
from ._targets import Unsupported

__all__ = ["run_streaming"]


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
    check(total == count * (count - 1) // 2, "streamed values are wrong")
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
