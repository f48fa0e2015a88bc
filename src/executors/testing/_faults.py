"""What the fault classes share: the accepted outcomes and the checks.

Every case here asks the same two questions of a backend: does every future
resolve within :data:`~executors.testing.BOUND` (nothing hangs, nothing is
silently lost), and does the outcome match what the backend *declares*? The
expected outcome is derived from :class:`executors.Capabilities` and the
contract written in :class:`executors.Executor`, never from the backend's
name:

* A worker that dies (``os._exit``, a signal, a segfault, in the task, while
  unpickling its argument or while pickling its result) fails the future it
  held with a :class:`~concurrent.futures.BrokenExecutor` subclass. With
  ``survives_worker_death`` every other future completes normally and the
  executor stays usable; without it every other future still resolves (its
  result, or a ``BrokenExecutor``) and the executor is broken for good. With
  ``retries_lost_tasks`` a task killed once from outside is run again and
  succeeds.
* A failure that kills no worker (an argument or a result that cannot be
  pickled) fails its own future with the pickling error and nothing else.
* Where the contract allows two outcomes (an argument that raises while it
  is unpickled in the worker may surface as that error or as a broken
  executor), the test accepts the documented set and records which one the
  backend chose; ``scripts/semantics_table.py`` publishes the record.

Observations are attached to the test report as the ``observed`` user
property, so the published table says *what happened*, not only "passed".

The fault classes live beside the ordinary ones of their topic
(:mod:`~executors.testing.crash`, :mod:`~executors.testing.pickling`,
:mod:`~executors.testing.shutdown`, :mod:`~executors.testing.initializer`,
:mod:`~executors.testing.bad_input`, :mod:`~executors.testing.leaks`); this
module holds what they share.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import BrokenExecutor, CancelledError, Future
from typing import Any

import pytest

from . import tasks
from ._support import BOUND, ContractBase

__all__ = [
    "ACCEPTED",
    "OTHERS",
    "FaultBase",
    "after_maybe_broken",
    "after_worker_death",
    "check_after",
    "check_others",
    "check_worker_death",
    "error_of",
    "kind_of",
    "settle",
    "started",
    "summarize",
]


#: The documented outcomes of each fault, by case. A future that a case
#: affects must raise one of these; docs/fault-tolerance.md mirrors this table.
ACCEPTED: dict[str, tuple[type[BaseException], ...]] = {
    # A worker died: always an infrastructure failure.
    "worker death": (BrokenExecutor,),
    # Pickling in the caller failed: the pickler's own error, raised by
    # submit() or set on the future.
    "argument fails to pickle": (TypeError, pickle.PicklingError),
    # The error raised inside the worker passes through like a task error,
    # or the backend reports its worker as broken (the stdlib pool does).
    "argument raises while unpickled": (RuntimeError, BrokenExecutor),
    # The task ran; sending its result back failed: the task's error.
    "result fails to pickle": (TypeError, pickle.PicklingError),
    "result raises while pickled": (ValueError, TypeError, pickle.PicklingError),
    # The caller could not load the result: the loading error, or a broken
    # executor (the stdlib pool breaks when its result pipe yields garbage).
    "result fails to unpickle": (RuntimeError, BrokenExecutor),
}

#: Futures submitted around each fault, to prove none of them is lost.
OTHERS = 4


# -- helpers ----------------------------------------------------------------


def kind_of(fut: Future[Any]) -> str:
    """``"ok"``, ``"cancelled"`` or the exception's type name, for a done future."""
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception(timeout=0)
    return "ok" if exc is None else type(exc).__name__


def settle(futs: Iterable[Future[Any]]) -> None:
    """Wait until every future is done; fail if any is not within the bound."""
    futs = list(futs)
    _, not_done = futures.wait(futs, timeout=BOUND)
    silent = [f for f in not_done if f.cancelled()]
    assert not silent, (
        f"{len(silent)} futures were cancelled without notifying their waiters: "
        "concurrent.futures.wait() and as_completed() hang on them "
        "(CPython gh-109934; see executors._base.notify_cancelled)"
    )
    assert not not_done, (
        f"{len(not_done)} of {len(futs)} futures unresolved after {BOUND:.0f}s: "
        "lost or hung"
    )


def error_of(fut: Future[Any]) -> BaseException | None:
    """The future's exception within the bound (``CancelledError`` if cancelled)."""
    try:
        return fut.exception(timeout=BOUND)
    except futures.TimeoutError:
        pytest.fail(f"the affected future did not resolve within {BOUND:.0f}s")
    except CancelledError as exc:
        return exc


def summarize(futs: Iterable[Future[Any]]) -> str:
    """For example ``"10 ok, 2 BrokenProcessPool"``."""
    counts = Counter(kind_of(f) for f in futs)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def check_others(
    executor: Any,
    others: list[tuple[Future[Any], Any]],
    *,
    worker_died: bool,
    cancelled_ok: bool = False,
) -> str:
    """Check the futures submitted around a fault; return a summary.

    Args:
        executor: The executor under test.
        others: Each future with the value it must produce if it succeeds.
        worker_died: The fault killed a worker. Without
            ``survives_worker_death`` the others may then fail with a
            ``BrokenExecutor``; otherwise each must succeed.
        cancelled_ok: A cancelled future counts as resolved (after
            ``shutdown(cancel_futures=True)``).
    """
    settle(f for f, _ in others)
    strict = not worker_died or executor.capabilities.survives_worker_death
    for fut, expected in others:
        if fut.cancelled():
            assert cancelled_ok, "a future was cancelled that nobody cancelled"
            continue
        exc = fut.exception()
        if exc is None:
            ok = fut.result() == expected
            assert ok, "a future completed with the wrong value"
        elif strict:
            raise AssertionError(
                "a future unrelated to the fault failed with "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        else:
            assert isinstance(exc, BrokenExecutor), (
                f"a future failed with {type(exc).__name__}, not BrokenExecutor"
            )
    return summarize(f for f, _ in others)


def check_after(executor: Any, *, broken_required: bool) -> str:
    """Check what a new ``submit`` does after a fault; return ``usable``/``broken``.

    Args:
        executor: The executor under test.
        broken_required: The executor must be broken (a worker died and the
            backend does not declare ``survives_worker_death``); otherwise it
            must be usable.
    """
    try:
        fut = executor.submit(tasks.add, 2, 2)
    except BrokenExecutor:
        assert broken_required, "the executor is broken after a fault that should not"
        return "broken"
    exc = error_of(fut)
    if exc is None:
        assert not broken_required, (
            "a worker died, the backend does not declare survives_worker_death, "
            "yet the executor still runs tasks"
        )
        assert fut.result() == 4
        return "usable"
    assert isinstance(exc, BrokenExecutor), (
        f"a task after the fault failed with {type(exc).__name__}: {exc}"
    )
    assert broken_required, "the executor is broken after a fault that should not"
    return "broken"


def after_worker_death(executor: Any) -> str:
    """``check_after`` when a worker died: broken unless declared otherwise."""
    return check_after(
        executor, broken_required=not executor.capabilities.survives_worker_death
    )


def check_worker_death(
    executor: Any, fut: Future[Any], others: list[tuple[Future[Any], Any]], what: str
) -> str:
    """``fut``, ``what`` (a task whose worker died), failed as a worker death;
    ``others`` and the executor fared as after one. The line to observe."""
    exc = error_of(fut)
    assert isinstance(exc, ACCEPTED["worker death"]), (
        f"{what} gave {exc!r}, not BrokenExecutor"
    )
    summary = check_others(executor, others, worker_died=True)
    after = after_worker_death(executor)
    return f"{type(exc).__name__}; others: {summary}; then {after}"


def after_maybe_broken(executor: Any, error: BaseException | None) -> str:
    """``check_after`` when the backend chose between task error and breakage.

    A task-level error must leave the executor usable; a ``BrokenExecutor``
    may leave it broken unless the backend declares ``survives_worker_death``.
    """
    if isinstance(error, BrokenExecutor) and not (
        executor.capabilities.survives_worker_death
    ):
        try:
            fut = executor.submit(tasks.add, 2, 2)
        except BrokenExecutor:
            return "broken"
        exc = error_of(fut)
        if exc is None:
            return "usable"
        assert isinstance(exc, BrokenExecutor)
        return "broken"
    return check_after(executor, broken_required=False)


def started(executor: Any) -> None:
    """Run one task, so workers exist before the fault is injected."""
    assert executor.submit(tasks.add, 1, 1).result(timeout=BOUND) == 2


class FaultBase(ContractBase):
    """Shared fixtures of the fault classes."""

    @pytest.fixture
    def observe(self, request: pytest.FixtureRequest) -> Callable[[str], None]:
        """Record what the backend did, for the published semantics table."""

        def record(text: str) -> None:
            request.node.user_properties.append(("observed", text))

        return record
