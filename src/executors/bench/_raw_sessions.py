"""The raw libraries, used directly the way their documentation shows.

Each session drives one library at its default settings unless a workload
says otherwise; the serial baseline is a plain loop. Imported only in the
measurement subprocess of a raw target.
"""

from __future__ import annotations

import functools
import multiprocessing
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import _tasks
from ._sessions import Session
from ._targets import EAGER_MAP, Unsupported

__all__ = ["RAW_SESSIONS"]


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
            raise Unsupported(EAGER_MAP.format(type(self.pool).__name__ + ".map"))
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
    folder: str | None = None

    def start(self) -> None:
        from distributed import Client, LocalCluster
        from distributed.security import Security

        # Its files in a folder of its own, as the backend's cluster keeps
        # them: Dask's default leaves $TMPDIR/dask-scratch-space behind.
        self.folder = tempfile.mkdtemp(prefix="executors-bench-dask-")
        # The same mutual TLS as the backend's own local cluster, so that
        # "vs raw" compares like with like.
        self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            security=Security.temporary(),  # type: ignore[no-untyped-call]
            local_directory=self.folder,
            scheduler_kwargs={"local_directory": self.folder},
        )
        self.client = Client(self.cluster)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.cluster.close()
            self.client = self.cluster = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

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


RAW_SESSIONS: dict[str, type[Session]] = {
    "raw.ProcessPoolExecutor": RawProcessPoolSession,
    "raw.Pool": RawPoolSession,
    "raw.joblib": RawJoblibSession,
    "raw.dask": RawDaskSession,
    "raw.celery": RawCelerySession,
    "raw.ThreadPoolExecutor": RawThreadPoolSession,
    "raw.Process": RawProcessPerTaskSession,
    "serial": SerialSession,
}
