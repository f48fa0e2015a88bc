"""One executor's connection to its deployment, from its first task to its end.

Opened on the first ``submit`` or ``map``: the private deployment started
(if the executor has one) and its app made, the result listener subscribed
before any task goes out, and the threads that watch the deployment
started. Closed when the executor is done with it: the threads asked to
end, the private deployment stopped, and the connections of an app the
executor made closed. The executor decides what the threads' reports mean
(the callbacks); this module only wires them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.backends.redis import RedisBackend

from ..._lifecycle import ManagerThread, manager_failed
from ._celeryside import close_app, connection_lost, make_app
from ._deployment import QUEUE, LocalDeployment
from ._deploymentwatch import DeploymentWatch
from ._lostwatch import LostWorkerWatch
from ._results import ResultListener
from ._sent import SentTasks
from .worker import PRIVATE_CONFIG

__all__ = ["DeploymentConnection"]


class DeploymentConnection:
    """The app, the private deployment and the threads of one executor.

    Args:
        app: The existing deployment's app; ``None`` for a private one.
        owns_app: The executor made ``app`` (from ``broker=``), or will
            make it (private): its connections are closed with this one.
        queue_name: The queue to send to; ``None``: the app's default.
        deployment: The private deployment, not started yet.
        sent: The executor's table of tasks sent.
        lost_after: ``lost_worker_timeout``; ``None`` runs no lost-worker
            watch.
        on_broken: Breaks the executor with the error the callable makes.
        on_worker_lost: :class:`~._lostwatch.LostWorkerWatch`'s report.
        on_refused: :class:`~._deploymentwatch.DeploymentWatch`'s report of
            a result Redis refused.
    """

    def __init__(
        self,
        app: Any,
        *,
        owns_app: bool,
        queue_name: str | None,
        deployment: LocalDeployment | None,
        sent: SentTasks,
        lost_after: float | None,
        on_broken: Callable[[Callable[[], BaseException]], None],
        on_worker_lost: Callable[[list[str], str | None, float], object],
        on_refused: Callable[[str], object],
    ) -> None:
        self._app = app
        self._owns_app = owns_app
        self._queue_name = queue_name
        self._deployment = deployment
        self._sent = sent
        self._lost_after = lost_after
        self._on_broken = on_broken
        self._on_worker_lost = on_worker_lost
        self._on_refused = on_refused
        self._listener: ResultListener | None = None
        self._deployment_watch: DeploymentWatch | None = None
        self._lostwatch: LostWorkerWatch | None = None

    def threads(self) -> tuple[ManagerThread | None, ...]:
        """The threads started (``None`` for those not), to join."""
        return (self._listener, self._deployment_watch, self._lostwatch)

    def open(self) -> None:
        """Start the deployment (if private) and the threads.

        Raises:
            ExecutorFailedError: the private deployment did not start.
            TypeError: the app's result backend is not Redis.
            Exception: the broker or result backend could not be reached.
        """
        deployment = self._deployment
        early: list[dict[str, Any]] = []
        if deployment is not None:
            deployment.start()
            early = deployment.wait_ready()
            self._app = make_app(deployment.url, deployment.url, PRIVATE_CONFIG)
            self._queue_name = QUEUE
        app = self._app
        if not isinstance(app.backend, RedisBackend):
            raise TypeError(
                "the 'celery' backend needs a Redis result backend (redis://, "
                f"rediss:// or redis+socket://); this app has {app.backend!r}"
            )
        if self._queue_name is None:
            self._queue_name = app.conf.task_default_queue
        self._sent.connect(app, self._queue_name)
        listener = ResultListener(
            app.backend,
            self._sent.prefix,
            self._sent.on_result,
            self._sent.outstanding,
            self._on_backend_lost,
            self._on_thread_failure,
            close_client=self._owns_app,
        )
        listener.subscribe()
        self._listener = listener
        listener.start()
        if self._lost_after is not None:
            lostwatch = LostWorkerWatch(
                app,
                self._sent.outstanding_since,
                self._sent.task_id,
                self._on_worker_lost,
                lambda error: self._on_broken(
                    manager_failed("celery", "lost-worker watch", error)
                ),
                self._lost_after,
                self._queue_name,
            )
            self._lostwatch = lostwatch
            lostwatch.start()
        if deployment is not None:
            watch = DeploymentWatch(
                deployment,
                early,
                self._on_broken,
                self._on_thread_failure,
                self._on_refused,
            )
            self._deployment_watch = watch
            watch.start()

    def close(self) -> None:
        """Ask the threads to end; stop the private deployment; close our app.

        Also after an :meth:`open` that failed halfway.
        """
        if self._deployment_watch is not None:
            self._deployment_watch.stop()
        if self._listener is not None:
            self._listener.stop()
        if self._lostwatch is not None:
            self._lostwatch.stop()
        if self._deployment is not None:
            self._deployment.stop()
        if self._owns_app and self._app is not None:
            close_app(self._app, private=self._deployment is not None)

    def _on_backend_lost(self, error: BaseException) -> None:
        self._on_broken(connection_lost("result backend", error))

    def _on_thread_failure(self, error: BaseException) -> None:
        self._on_broken(manager_failed("celery", "result", error))
