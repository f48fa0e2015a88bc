"""What the benchmark runs on: our backends, the raw libraries, a serial baseline.

This module only describes targets (:class:`TargetSpec`) and finds which
can run here; the parent process reads nothing else, so it imports no
library. Each target is driven through a session (:mod:`._sessions` for our
backends, :mod:`._raw_sessions` for the raw libraries), opened in the
measurement subprocess.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EAGER_MAP",
    "RAW_TARGETS",
    "TargetSpec",
    "Unsupported",
    "default_start_method",
    "discover_targets",
]

# Our backend -> the raw library it wraps (or its closest peer), for the
# "vs raw" ratio. `queue` is measured against multiprocessing.Pool, the
# fastest raw peer (issue 4 states its goals against it).
COUNTERPARTS = {
    "process": "raw.ProcessPoolExecutor",
    "mp_pool": "raw.Pool",
    "queue": "raw.Pool",
    "joblib": "raw.joblib",
    "dask": "raw.dask",
    "celery": "raw.celery",
    "thread": "raw.ThreadPoolExecutor",
    "inline": "serial",
}

_PER_TASK_ONLY = "one process per task suits a few long tasks only"
_NO_POOL = "the serial baseline has no pool"
EAGER_MAP = (
    "{} reads its whole input at the call before Python 3.14 (no buffersize), "
    "so it cannot stream a large generator"
)


class Unsupported(Exception):
    """The target has no way to run this workload (reported, not an error)."""


def default_start_method() -> str:
    """The start method our process backends use by default.

    Mirrors the library's documented default (forkserver where it exists,
    else spawn) so raw pools are measured with the same start method as ours
    unless ``--start-method`` says otherwise: fork starts workers in ~5 ms,
    forkserver/spawn in ~100 ms, and mixing them would make every start-up
    ratio meaningless.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


@dataclass(frozen=True)
class TargetSpec:
    """One thing the benchmark measures.

    Attributes:
        name: The name shown in tables and accepted by ``--backends``.
        kind: ``"ours"`` (a backend), ``"raw"`` (a library used directly) or
            ``"baseline"`` (plain serial Python).
        summary: One line on what it is.
        workers: The number of workers it runs with.
        counterpart: The target its "vs raw" ratio compares against.
        available: Whether it can run here.
        reason: Why it is unavailable, if it is not.
        unsupported: Workload name -> why this target does not run it.
        start_method: The multiprocessing start method for raw process
            pools; for our backends, one to pass as ``mp_context`` (or None
            to keep the backend's default).
    """

    name: str
    kind: str
    summary: str
    workers: int
    counterpart: str | None = None
    available: bool = True
    reason: str | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    start_method: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the spec as plain JSON data."""
        return {
            "name": self.name,
            "kind": self.kind,
            "summary": self.summary,
            "workers": self.workers,
            "counterpart": self.counterpart,
            "available": self.available,
            "reason": self.reason,
            "unsupported": dict(self.unsupported),
            "start_method": self.start_method,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetSpec:
        """Rebuild a spec from :meth:`to_json` data."""
        return cls(**data)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _raw_targets(workers: int, start_method: str) -> list[TargetSpec]:
    eager = sys.version_info < (3, 14)
    ppe_unsupported = (
        {"streaming": EAGER_MAP.format("ProcessPoolExecutor.map")} if eager else {}
    )
    tpe_unsupported = (
        {"streaming": EAGER_MAP.format("ThreadPoolExecutor.map")} if eager else {}
    )
    per_task_only = dict.fromkeys(
        ("tiny", "tiny-large", "payload", "streaming", "func"), _PER_TASK_ONLY
    )
    joblib_ok = _has("joblib")
    dask_ok = _has("dask") and _has("distributed")
    celery_ok = _has("celery") and _has("redis")
    return [
        TargetSpec(
            "raw.ProcessPoolExecutor",
            "raw",
            "concurrent.futures.ProcessPoolExecutor, used directly",
            workers,
            unsupported=ppe_unsupported,
            start_method=start_method,
        ),
        TargetSpec(
            "raw.Pool",
            "raw",
            "multiprocessing.Pool, used directly",
            workers,
            start_method=start_method,
        ),
        TargetSpec(
            "raw.joblib",
            "raw",
            "joblib.Parallel(n_jobs=N), one call per batch of work (loky)",
            workers,
            available=joblib_ok,
            reason=None
            if joblib_ok
            else 'needs joblib: pip install "executors[joblib]"',
        ),
        TargetSpec(
            "raw.dask",
            "raw",
            "distributed.Client on a LocalCluster of N one-thread workers",
            workers,
            available=dask_ok,
            reason=None if dask_ok else 'needs dask: pip install "executors[dask]"',
            unsupported={
                "streaming": "client.map reads its whole input: no bounded map"
            },
        ),
        TargetSpec(
            "raw.celery",
            "raw",
            "Celery used directly (task.delay().get(), group) on a private "
            "Redis and one prefork worker of N processes, as the backend's",
            workers,
            available=celery_ok,
            reason=None
            if celery_ok
            else 'needs celery: pip install "executors[celery]"',
            unsupported={
                "streaming": "a group reads its whole input: no bounded map",
                "payload": "the private deployment sends JSON, which carries "
                "no numpy arrays",
                "func": "runs only tasks its worker registers",
            },
        ),
        TargetSpec(
            "raw.ThreadPoolExecutor",
            "raw",
            "concurrent.futures.ThreadPoolExecutor, used directly",
            workers,
            unsupported=tpe_unsupported,
        ),
        TargetSpec(
            "raw.Process",
            "raw",
            "one multiprocessing.Process per task, at most N at a time",
            workers,
            unsupported=per_task_only,
            start_method=start_method,
        ),
    ]


RAW_TARGETS = (
    "raw.ProcessPoolExecutor",
    "raw.Pool",
    "raw.joblib",
    "raw.dask",
    "raw.celery",
    "raw.ThreadPoolExecutor",
    "raw.Process",
)


def discover_targets(workers: int, start_method: str | None) -> list[TargetSpec]:
    """Every target, available or not: our backends first, then raw, then serial.

    Our backends come from :func:`executors.list_backends`, so a backend
    that lands (or a plugin that is installed) is measured without any
    change here.

    Args:
        workers: Workers per pool (``--workers``).
        start_method: ``--start-method``; ``None`` keeps each backend's
            default and gives raw pools :func:`default_start_method`.
    """
    import executors

    specs = []
    for info in executors.list_backends():
        concurrent = info.capabilities is None or info.capabilities.runs_concurrently
        specs.append(
            TargetSpec(
                info.name,
                "ours",
                info.summary,
                workers if concurrent else 1,
                counterpart=COUNTERPARTS.get(info.name),
                available=info.available,
                reason=None if info.available else (info.error or "not available"),
                start_method=start_method,
            )
        )
    specs.extend(_raw_targets(workers, start_method or default_start_method()))
    specs.append(
        TargetSpec(
            "serial",
            "baseline",
            "a plain loop in one process: the baseline for speedups",
            1,
            # payload: a NumPy copy, the machine's limit (see run_payload).
            unsupported=dict.fromkeys(
                ("startup", "roundtrip", "classic", "streaming"), _NO_POOL
            ),
        )
    )
    return specs
