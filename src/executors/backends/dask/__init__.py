"""Backend ``dask``: a Dask cluster, local by default, remote by address.

Without ``address`` or ``client`` the first ``submit`` or ``map`` starts a
:class:`distributed.LocalCluster` of worker processes (one thread each, on
127.0.0.1, TLS with a throw-away certificate, no dashboard) and
``shutdown()`` closes it. ``address=`` connects to a running scheduler and
closes only our client; ``client=`` reuses the caller's client and closes
nothing of it.

Data flow::

    submit(fn, *args)                                        caller thread
      | dumps((fn, args, kwargs)) here: a pickling error fails the future
      | with the error every other backend raises
      v
    CallQueue              <- cancel() and shutdown(cancel_futures) act here;
      |                       timeouts and retries are counted here
      v   launch, while the calls in Dask are fewer than its worker threads;
      |   the future turns "running" there
    client.submit(run_task, payload, pure=False)             Dask scheduler
      |                                         (sees bytes, never unpickles)
      v
    worker process: _outcome.run_call: unpickle, run, pickle the outcome
      |
      v   a coroutine on the client's event loop gathers the bytes
    events queue -> manager thread "executors-dask-manager": decode,
                    CallQueue.settle (callbacks run on the callback thread),
                    KilledWorker -> WorkerCrashedError; at the end close
                    the client and the cluster

Why the payload is bytes: with a ``LocalCluster`` the scheduler runs inside
the caller's process and unpickles every task it receives. An argument that
segfaults or exits while being unpickled would take the caller down, and
one that fails to pickle would surface as Dask's own ``TypeError``. As bytes,
arguments are pickled in the caller (so failures are the usual pickling
errors) and unpickled only in a worker.

Why calls wait in our own queue rather than in Dask's: a future that Dask has
not seen can be cancelled for certain, so ``cancel()`` is honest; and Dask
counts every task *assigned* to a worker that dies as "suspicious", not only
the one that killed it. Handing over no more tasks than there are worker
threads keeps innocent tasks from being failed along with a crashing one.

Modules: :mod:`._executor` (the executor), :mod:`._dispatch` (launching,
following, settling), :mod:`._cluster` (the local cluster and the client),
:mod:`._worker` (what runs in a worker), :mod:`._options` (validation).
"""

from __future__ import annotations

from ..._errors import DaskClusterError
from ._executor import DaskExecutor

__all__ = ["DaskClusterError", "DaskExecutor"]
