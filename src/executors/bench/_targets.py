"""What the benchmark runs on: our backends, the raw libraries, a serial baseline.

Every target is driven through the same small :class:`Session` interface, so
a workload is written once and measures ``executors.create("mp_pool")`` and a
raw :class:`multiprocessing.pool.Pool` with the same code. Our backends are
reached through the public API only (:func:`executors.create`); the raw
targets call their library the way its documentation shows, at its default
settings unless a workload says otherwise.

The parent process only reads :class:`TargetSpec` records (cheap, no heavy
import); sessions are opened in the measurement subprocess.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _tasks

__all__ = [
    "RAW_TARGETS",
    "Session",
    "TargetSpec",
    "Unsupported",
    "default_start_method",
    "discover_targets",
    "open_session",
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
_EAGER_MAP = (
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
        {"streaming": _EAGER_MAP.format("ProcessPoolExecutor.map")} if eager else {}
    )
    tpe_unsupported = (
        {"streaming": _EAGER_MAP.format("ThreadPoolExecutor.map")} if eager else {}
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
            unsupported=dict.fromkeys(
                ("startup", "roundtrip", "classic", "payload", "streaming"), _NO_POOL
            ),
        )
    )
    return specs


class Session(ABC):
    """One pool of one target, driven by the workloads.

    ``start()`` creates the pool (importing its library on first use, so the
    first start in a fresh process is a true cold start); every other method
    runs work on it and returns plain results.
    """

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.workers = spec.workers

    @abstractmethod
    def start(self) -> None:
        """Create the pool (workers may start lazily, on the first task)."""

    @abstractmethod
    def close(self) -> None:
        """Release the pool and wait for its workers to exit."""

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """Run one task and wait for its result (the round trip)."""
        return self.submit_all(fn, [x])[0]

    @abstractmethod
    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        """Map over ``items``; ``chunksize=None`` means the library's default."""

    @abstractmethod
    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        """Start one task per argument at once, then wait for all of them."""

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        """Map lazily over a large iterable, holding a bounded amount of it."""
        raise Unsupported(f"{self.spec.name} has no bounded map")


class OursSession(Session):
    """One of our backends, through :func:`executors.create` only."""

    executor: Any = None

    def start(self) -> None:
        import executors

        options: dict[str, Any] = {"max_workers": self.workers}
        if self.spec.start_method is not None:
            try:
                self.executor = executors.create(
                    self.spec.name, mp_context=self.spec.start_method, **options
                )
                return
            except TypeError as exc:
                # A backend without processes (thread, inline, dask) has no
                # start method to choose; measure it with its defaults.
                if "mp_context" not in str(exc):
                    raise
        self.executor = executors.create(self.spec.name, **options)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.executor.submit(fn, x).result()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=chunksize))

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        futures = [self.executor.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        result: Iterator[Any] = self.executor.map(fn, items, buffersize=buffersize)
        return result


class _FuturesSession(Session):
    """A raw :mod:`concurrent.futures` pool (process or thread)."""

    pool: Any = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.submit(fn, x).result()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        # The stdlib default is chunksize=1 (one future per item).
        return list(self.pool.map(fn, items, chunksize=chunksize or 1))

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        futures = [self.pool.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        if sys.version_info < (3, 14):
            raise Unsupported(_EAGER_MAP.format(type(self.pool).__name__ + ".map"))
        result: Iterator[Any] = self.pool.map(fn, items, buffersize=buffersize)
        return result


class RawProcessPoolSession(_FuturesSession):
    def start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(self.spec.start_method)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=context)


class RawThreadPoolSession(_FuturesSession):
    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(self.workers)


class RawPoolSession(Session):
    """A raw :class:`multiprocessing.pool.Pool`."""

    pool: Any = None

    def start(self) -> None:
        context = multiprocessing.get_context(self.spec.start_method)
        self.pool = context.Pool(self.workers)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.apply_async(fn, (x,)).get()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        # chunksize=None is Pool.map's own heuristic: len / (4 * workers).
        result: list[Any] = self.pool.map(fn, items, chunksize)
        return result

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        pending = [self.pool.apply_async(fn, (a,)) for a in args]
        return [p.get() for p in pending]

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        # imap is Pool's lazy map; its chunk is set to our backends' largest
        # lazy chunk (buffersize / 2 workers) so the two do the same work.
        chunk = max(1, buffersize // (2 * self.workers))
        result: Iterator[Any] = self.pool.imap(fn, items, chunk)
        return result


class RawJoblibSession(Session):
    """``joblib.Parallel`` called the documented way, one call per batch."""

    def start(self) -> None:
        # Parallel has no pool object: loky starts its reusable executor on
        # the first call, which the start-up workload times.
        import joblib

        self._joblib = joblib

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        # The explicit way to stop loky's workers; otherwise they linger
        # for their idle timeout (300 s).
        get_reusable_executor().shutdown(wait=True)

    def _parallel(self, **options: Any) -> Any:
        return self._joblib.Parallel(n_jobs=self.workers, **options)

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        delayed = self._joblib.delayed
        return self._parallel()([delayed(fn)(x)])[0]

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        delayed = self._joblib.delayed
        batch = "auto" if chunksize is None else chunksize
        result: list[Any] = self._parallel(batch_size=batch)(
            delayed(fn)(x) for x in items
        )
        return result

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        delayed = self._joblib.delayed
        result: list[Any] = self._parallel()(delayed(fn)(a) for a in args)
        return result

    def stream(
        self, fn: Callable[[Any], Any], items: Iterable[Any], buffersize: int
    ) -> Iterator[Any]:
        # return_as="generator" with the default pre_dispatch reads its
        # input lazily: joblib's own bounded map.
        delayed = self._joblib.delayed
        result: Iterator[Any] = self._parallel(return_as="generator")(
            delayed(fn)(x) for x in items
        )
        return result


class RawDaskSession(Session):
    """A ``distributed.Client`` on a ``LocalCluster`` of one-thread workers."""

    client: Any = None
    cluster: Any = None

    def start(self) -> None:
        from distributed import Client, LocalCluster
        from distributed.security import Security

        # The same mutual TLS as the backend's own local cluster, so that
        # "vs raw" compares like with like.
        self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            security=Security.temporary(),  # type: ignore[no-untyped-call]
        )
        self.client = Client(self.cluster)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.cluster.close()
            self.client = self.cluster = None

    # pure=False everywhere: with Dask's default (pure=True) a repeated
    # measurement of the same inputs could be served from results still held
    # by the scheduler, and hashing every argument would be timed too.
    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.client.submit(fn, x, pure=False).result()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        if chunksize is None:
            result: list[Any] = self.client.gather(
                self.client.map(fn, items, pure=False)
            )
            return result
        # Dask has no chunksize: a batch per task is the hand-tuned way.
        batches = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
        futures = self.client.map(
            functools.partial(_tasks.run_batch, fn), batches, pure=False
        )
        return [x for batch in self.client.gather(futures) for x in batch]

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        futures = [self.client.submit(fn, a, pure=False) for a in args]
        result: list[Any] = self.client.gather(futures)
        return result


class RawCelerySession(Session):
    """Celery used directly, on a private deployment like the backend's.

    The same machinery as ``create("celery")``: a Redis server on a unix
    socket and one ``celery worker`` of ``workers`` prefork processes, whose
    worker also imports plain tasks for the benchmark's functions
    (:mod:`executors.backends.celery._benchtasks`). Calls go the documented
    way: ``task.delay(x).get()``, ``group(...)().get()``, and
    ``task.chunks(...)`` for a hand-picked chunksize.
    """

    app: Any = None
    deployment: Any = None

    def start(self) -> None:
        from celery import Celery

        from ..backends.celery import _benchtasks
        from ..backends.celery._deployment import QUEUE, LocalDeployment
        from ..backends.celery.worker import PRIVATE_CONFIG

        deployment = LocalDeployment(
            self.workers, include=("executors.backends.celery._benchtasks",)
        )
        self.deployment = deployment
        deployment.start()
        deployment.wait_ready()
        app = Celery(
            "bench-raw",
            set_as_current=False,
            broker=deployment.url,
            backend=deployment.url,
        )
        app.conf.update({**PRIVATE_CONFIG, "task_default_queue": QUEUE})
        self.app = app
        self._names = _benchtasks.TASKS

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None
        if self.deployment is not None:
            self.deployment.stop()
            self.deployment = None

    def _task(self, fn: Callable[[Any], Any]) -> Any:
        name = self._names.get(fn)
        if name is None:
            raise Unsupported(f"raw.celery has no Celery task for {fn!r}")
        return self.app.tasks[name]

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self._task(fn).delay(x).get()

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        from celery import group

        task = self._task(fn)
        if chunksize is None:
            result: list[Any] = group(task.s(x) for x in items)().get()
            return result
        # Celery's own chunking: each task runs a slice of the input.
        batches = task.chunks(((x,) for x in items), chunksize).group()().get()
        return [x for batch in batches for x in batch]

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        task = self._task(fn)
        pending = [task.delay(a) for a in args]
        return [p.get() for p in pending]


class RawProcessPerTaskSession(Session):
    """One ``multiprocessing.Process`` per task, at most ``workers`` at once.

    The hand-written version of the classic walk-through: no pool, so every
    task pays for starting a process.
    """

    def start(self) -> None:
        self._context = multiprocessing.get_context(self.spec.start_method)

    def close(self) -> None:
        pass

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        return self.submit_all(fn, items)

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        from multiprocessing.connection import wait

        results: list[Any] = [None] * len(args)
        waiting = list(enumerate(args))
        waiting.reverse()
        running: dict[Any, tuple[int, Any]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    index, arg = waiting.pop()
                    reader, writer = self._context.Pipe(duplex=False)
                    process = self._context.Process(  # type: ignore[attr-defined]
                        target=_tasks.run_to_pipe, args=(writer, fn, arg)
                    )
                    process.start()
                    writer.close()
                    running[reader] = (index, process)
                ready: list[Any] = wait(list(running))
                for connection in ready:
                    index, process = running.pop(connection)
                    outcome: tuple[bool, Any] = connection.recv()
                    connection.close()
                    process.join()
                    if not outcome[0]:
                        raise outcome[1]
                    results[index] = outcome[1]
        finally:
            for reader, (_, process) in running.items():
                reader.close()
                process.kill()
                process.join()
        return results


class SerialSession(Session):
    """A plain loop in the measuring process: the speed-up baseline."""

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def map(
        self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None
    ) -> list[Any]:
        return [fn(x) for x in items]

    def submit_all(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        return [fn(a) for a in args]


_RAW_SESSIONS: dict[str, type[Session]] = {
    "raw.ProcessPoolExecutor": RawProcessPoolSession,
    "raw.Pool": RawPoolSession,
    "raw.joblib": RawJoblibSession,
    "raw.dask": RawDaskSession,
    "raw.celery": RawCelerySession,
    "raw.ThreadPoolExecutor": RawThreadPoolSession,
    "raw.Process": RawProcessPerTaskSession,
    "serial": SerialSession,
}


def open_session(spec: TargetSpec) -> Session:
    """Return an unstarted session for ``spec`` (call ``start()`` next)."""
    if spec.kind == "ours":
        return OursSession(spec)
    return _RAW_SESSIONS[spec.name](spec)
