"""Creating and shutting down executors returns every fd and thread."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

import pytest

from . import tasks
from ._faults import (
    FaultBase,
)
from ._support import (
    BOUND,
    ExecutorFactory,
)

__all__ = [
    "LeakContract",
]


def _resources() -> tuple[int, int]:
    import psutil

    gc.collect()
    return psutil.Process().num_fds(), threading.active_count()


class LeakContract(FaultBase):
    """Creating and shutting down executors returns every fd and thread.

    The bound is on the total growth over the cycles, not on a rate: with
    no slack, a backend that keeps one fd or one thread per executor fails
    after the first counted cycle, so the cycles beyond that are for leaks
    that happen only sometimes (a race in shutdown), not for the bound.

    Attributes:
        leak_cycles: How many create/submit/shutdown cycles to run.
        leak_budget: Seconds after which the cycles stop early (a cluster
            backend takes seconds per cycle); at least ``min_cycles`` run.
        min_cycles: The fewest cycles that count as a test: more than either
            slack, so that a leak of one fd or thread per executor always
            exceeds it.
        fd_slack: File descriptors a backend may keep after the cycles.
        thread_slack: Threads a backend may keep after the cycles.
    """

    leak_cycles = 50
    leak_budget = 5.0
    min_cycles = 5
    fd_slack = 0
    thread_slack = 0

    @pytest.mark.slow
    @pytest.mark.timeout(300)
    def test_create_shutdown_cycles_do_not_leak(
        self, make_executor: ExecutorFactory, observe: Callable[[str], None]
    ) -> None:
        # With fewer cycles than the slack, a leak of one per executor
        # would pass unseen.
        assert self.min_cycles > max(self.fd_slack, self.thread_slack), (
            f"min_cycles={self.min_cycles} cannot show a leak of one per "
            f"executor under fd_slack={self.fd_slack}, "
            f"thread_slack={self.thread_slack}"
        )
        # Two warm-up cycles start what lives once per interpreter (the
        # forkserver, the resource tracker, a library's event-loop thread):
        # those are not per-executor leaks.
        for _ in range(2):
            self._cycle(make_executor)
        fds0, threads0 = _resources()
        start = time.monotonic()
        cycles = 0
        while cycles < self.leak_cycles:
            self._cycle(make_executor)
            cycles += 1
            over = time.monotonic() - start > self.leak_budget
            if over and cycles >= self.min_cycles:
                break
        took = time.monotonic() - start
        deadline = time.monotonic() + BOUND
        while True:
            fds, threads = _resources()
            fds_ok = fds <= fds0 + self.fd_slack
            if (fds_ok and threads <= threads0 + self.thread_slack) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        observe(
            f"{cycles} cycles in {took:.0f}s: fds {fds0}->{fds}, "
            f"threads {threads0}->{threads}"
        )
        assert fds <= fds0 + self.fd_slack, (
            f"open fds grew from {fds0} to {fds} over {cycles} cycles"
        )
        assert threads <= threads0 + self.thread_slack, (
            f"threads grew from {threads0} to {threads} over {cycles} "
            f"cycles: {sorted(t.name for t in threading.enumerate())}"
        )

    @staticmethod
    def _cycle(make_executor: ExecutorFactory) -> None:
        executor = make_executor()
        assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2
        start = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - start
        assert took < BOUND, f"shutdown took {took:.1f}s"
