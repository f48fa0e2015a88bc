"""Backend ``celery``: a Celery deployment behind the executor contract.

Modules, each one role:

* :mod:`.task`: the one generic task (``executors.run_call``) that every
  worker of a deployment serving executors must import; light, so that a
  user's Celery app can ``include`` it.
* :mod:`.worker`: a ready-made Celery app for ``celery -A
  executors.backends.celery.worker worker``, and the hooks the private
  deployment's worker runs (caller watch, initializer, readiness).
* :mod:`._deployment`: the private deployment (a Redis server and one
  ``celery worker``) that ``create("celery")`` starts and stops.
* :mod:`._redisserver`: that deployment's Redis server (found, configured,
  memory-capped).
* :mod:`._deploymentwatch`: the thread that reads the private worker's
  reports and breaks the executor when the deployment cannot go on.
* :mod:`._results`: the thread that settles futures from the result
  backend's pub/sub.
* :mod:`._lostwatch`: on an existing deployment, the thread that fails the
  tasks of a worker that stopped answering (its machine lost).
* :mod:`._celeryside`: the apps the executor makes, and Celery's failures
  translated into the project's errors.
* :mod:`._sent`: the tasks one executor has sent to Celery (publishing,
  matching results to calls, revoking).
* :mod:`._arguments`: the options of ``create("celery")``, checked.
* :mod:`._connection`: one executor's app, private deployment and threads,
  started on its first task and stopped once.
* :mod:`._executor`: :class:`CeleryExecutor` on the shared call queue.
* :mod:`._benchtasks`: plain Celery tasks for the benchmark's
  ``raw.celery`` target (imported only by its worker and by that target).

Importing this package imports nothing of Celery; ``CeleryExecutor`` is
loaded on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CeleryExecutor"]


def __getattr__(name: str) -> Any:
    if name == "CeleryExecutor":
        from ._executor import CeleryExecutor

        return CeleryExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
