"""The recycle workload: a pool whose workers retire every few tasks.

``max_tasks_per_child`` bounds what a leaky task can accumulate in a
worker, but a pool that waits for each replacement to start cold loses
most of its throughput to start-ups (a ``max_tasks_per_child=25`` pool fell
from 3,956 to 237 tasks/s in one public report). Measured here: the same
short tasks on a recycling pool and on the same pool without recycling,
alternately, and the ratio of the two.

Our backends run it when they declare ``Capabilities.recycles_workers``;
the raw targets are the stdlib pools with their own ``max_tasks_per_child``
(``ProcessPoolExecutor``) and ``maxtasksperchild`` (``Pool``).
``ProcessPoolExecutor(max_tasks_per_child=)`` hangs on some CPython
releases (gh-115634, seen on 3.11.7 and 3.12.1: a worker that retires is
never replaced); a run that makes no progress for :data:`STALL_SECONDS` is
reported as hung, its workers killed, instead of hanging the benchmark.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

from . import _tasks
from ._measure import Context, Outcome, check
from ._targets import Unsupported

__all__ = ["STALL_SECONDS", "Hung", "run_recycle"]

#: A run in which no task finished for this long is reported as hung. A
#: cold worker start takes ~0.1 s, seconds on a loaded machine: far less.
STALL_SECONDS = 15.0


class Hung(Exception):
    """No task finished for :data:`STALL_SECONDS`."""


class _Pool:
    """One pool of the comparison: submit tasks, wait, close (or kill)."""

    def __init__(self, executor: Any, kill: Callable[[], None]) -> None:
        self.executor = executor
        self._kill = kill

    def run(self, count: int, seconds: float) -> float:
        """Run ``count`` tasks of ``seconds``; return tasks/s."""
        began = time.perf_counter()
        futures = [
            self.executor.submit(_tasks.sleep_for, seconds) for _ in range(count)
        ]
        pending: set[Any] = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending,
                timeout=STALL_SECONDS,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            if not done:
                raise Hung(
                    f"no task finished for {STALL_SECONDS:g} s, "
                    f"{len(pending):,} of {count:,} pending"
                )
        took = time.perf_counter() - began
        values = [f.result() for f in futures]
        check(values == [seconds] * count, "tasks returned wrong results")
        return count / took

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()


def _ours(ctx: Context, per_child: int | None) -> _Pool:
    import executors

    options: dict[str, Any] = {"max_workers": ctx.spec.workers}
    if ctx.spec.start_method is not None:
        options["mp_context"] = ctx.spec.start_method
    if per_child is not None:
        options["max_tasks_per_child"] = per_child
    try:
        executor = executors.create(ctx.spec.name, **options)
    except TypeError as exc:
        raise Unsupported(
            f"{ctx.spec.name} does not take these options: {exc}"
        ) from exc
    if not executor.capabilities.recycles_workers:
        executor.shutdown(wait=True)
        raise Unsupported(
            f"{ctx.spec.name} does not declare Capabilities.recycles_workers"
        )

    def kill() -> None:
        executor.kill_workers()
        executor.shutdown(wait=False, cancel_futures=True)

    return _Pool(executor, kill)


def _raw_futures(ctx: Context, per_child: int | None) -> _Pool:
    context = multiprocessing.get_context(ctx.spec.start_method)
    extra: dict[str, Any] = {}
    if per_child is not None:
        extra["max_tasks_per_child"] = per_child
    pool: Any = concurrent.futures.ProcessPoolExecutor(
        ctx.spec.workers, mp_context=context, **extra
    )

    def kill() -> None:
        for process in list((pool._processes or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    return _Pool(pool, kill)


class _PoolAsExecutor:
    """``multiprocessing.Pool`` behind ``submit``/``shutdown``."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def submit(
        self, fn: Callable[..., Any], *args: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pool.apply_async(
            fn, args, callback=future.set_result, error_callback=future.set_exception
        )
        return future

    def shutdown(self, wait: bool = True) -> None:
        self.pool.close()
        if wait:
            self.pool.join()


def _raw_pool(ctx: Context, per_child: int | None) -> _Pool:
    context = multiprocessing.get_context(ctx.spec.start_method)
    pool = context.Pool(ctx.spec.workers, maxtasksperchild=per_child)
    return _Pool(_PoolAsExecutor(pool), pool.terminate)


_OPENERS: dict[str, Callable[[Context, int | None], _Pool]] = {
    "raw.ProcessPoolExecutor": _raw_futures,
    "raw.Pool": _raw_pool,
}


def run_recycle(ctx: Context) -> Outcome:
    config = ctx.config
    spec = ctx.spec
    opener: Callable[[Context, int | None], _Pool]
    if spec.kind == "ours":
        opener = _ours
    elif spec.name in _OPENERS:
        opener = _OPENERS[spec.name]
    else:
        raise Unsupported(f"{spec.name} has no max_tasks_per_child")
    count, seconds = config.recycle_tasks, config.recycle_task_seconds
    per_child = config.recycle_per_child
    outcome = Outcome(
        params={"tasks": count, "task_s": seconds, "max_tasks_per_child": per_child}
    )
    plain = opener(ctx, None)
    try:
        recycling = opener(ctx, per_child)
    except BaseException:
        plain.close()
        raise
    pools = {"plain": plain, "recycling": recycling}
    rates: dict[str, list[float]] = {"plain": [], "recycling": []}
    try:
        # Warmed up: every worker of both pools started and ran a task.
        for pool in pools.values():
            pool.run(spec.workers, 0.01)
        began = time.monotonic()
        for _ in range(max(1, config.repeats)):
            # Alternately, so that a change in the machine's load weighs on
            # both sides of each ratio alike.
            for key in ("plain", "recycling"):
                rates[key].append(pools[key].run(count, seconds))
            if time.monotonic() - began > config.budget:
                break
    except Hung as exc:
        outcome.notes.append(
            f"max_tasks_per_child={per_child}: hung ({exc}); on CPython 3.11.7 and "
            "3.12.1 ProcessPoolExecutor never replaces a retired worker "
            "(gh-115634)"
            if spec.name == "raw.ProcessPoolExecutor"
            else f"max_tasks_per_child={per_child}: hung ({exc})"
        )
        outcome.params["hung"] = True
        for pool in pools.values():
            pool.kill()
        # The killed pool's threads may still wait: the subprocess exits.
        outcome.abandon = True
    else:
        for pool in pools.values():
            pool.close()
    outcome.samples["plain"] = rates["plain"]
    outcome.samples["recycling"] = rates["recycling"]
    outcome.samples["ratio"] = [
        mine / theirs
        for mine, theirs in zip(rates["recycling"], rates["plain"], strict=False)
    ]
    if outcome.samples["ratio"]:
        outcome.params["ratio_range"] = [
            min(outcome.samples["ratio"]),
            max(outcome.samples["ratio"]),
        ]
        outcome.params["ratio_median"] = statistics.median(outcome.samples["ratio"])
    return outcome
