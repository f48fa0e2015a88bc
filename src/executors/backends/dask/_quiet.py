"""Keeping Dask quiet, and its HTTP servers closed, on both sides of the wire.

The caller installs these on its scheduler, the workers (from their
preload, :mod:`._worker`) on themselves: so this module imports nothing of
the executor's side.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any

__all__ = [
    "HEALTH_ONLY_ROUTES",
    "QuietHandshakes",
    "QuietHeartbeats",
    "quiet_handshakes",
    "serve_health_only",
]

#: The HTTP routes of our scheduler and workers without a dashboard: the
#: health check only. Dask's others (info pages, JSON, Prometheus metrics,
#: statics, the proxy) show logs, task keys and call stacks to any user of
#: this machine, over plain HTTP and without authentication.
HEALTH_ONLY_ROUTES = ["distributed.http.health"]
# What distributed.comm.tcp logs when a connection speaks no TLS.
_HANDSHAKE_FAILED = "Listener on %r: TLS handshake failed with remote %r: %s"


def serve_health_only(server: Any) -> None:
    """Drop Dask's ``/sitemap.json`` from ``server``, whose routes are health only.

    Dask adds it to every HTTP server, whatever the routes: it would list
    the routes (only ``/health`` here), the one page left besides that.
    """
    from distributed.http.routing import DirectoryHandler

    application = getattr(server, "http_application", None)
    if application is None:
        return
    for rule in application.default_router.rules:
        router = rule.target
        rules = getattr(router, "rules", None)
        if isinstance(rules, list):
            rules[:] = [r for r in rules if r.target is not DirectoryHandler]


class QuietHandshakes(logging.Filter):
    """Lowers a failed TLS handshake on our cluster's ports to a DEBUG record.

    Any process of this machine may open a connection to those ports; one
    that speaks no TLS (a port scan, a stray client) is turned away, and
    Dask would log a WARNING about it in the caller: no news to the caller,
    and noise in its logs. Installed on Dask's logger only while one of our
    clusters runs, and only for their ports, unless ``everywhere`` (a worker
    process of ours, whose every port is the cluster's).
    """

    def __init__(self, everywhere: bool = False) -> None:
        super().__init__()
        self.everywhere = everywhere
        self._clusters: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._logger = logging.getLogger("distributed.comm.tcp")

    def watch(self, cluster: Any) -> None:
        """Quieten the ports of ``cluster`` until :meth:`forget`."""
        with self._lock:
            if not self._clusters:
                self._logger.addFilter(self)
            self._clusters.add(cluster)

    def install(self) -> None:
        """Quieten every port of this process (``everywhere``)."""
        self._logger.addFilter(self)

    def forget(self, cluster: Any) -> None:
        with self._lock:
            self._clusters.discard(cluster)
            if not self._clusters:
                self._logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno != logging.WARNING
            or record.msg != _HANDSHAKE_FAILED
            or not isinstance(record.args, tuple)
            or not record.args
        ):
            return True
        if not self.everywhere and not self._ours(record.args[0]):
            return True
        # Handled by this logger's filters again, now as DEBUG: let through.
        self._logger.debug(record.msg, *record.args)
        return False

    def _ours(self, listener: object) -> bool:
        with self._lock:
            clusters = list(self._clusters)
        for cluster in clusters:
            with contextlib.suppress(Exception):
                servers = [cluster.scheduler, *cluster.workers.values()]
                for server in servers:
                    for found in getattr(server, "listeners", ()):
                        if found.listen_address == listener:
                            return True
        return False


quiet_handshakes = QuietHandshakes()


#: What a Dask worker logs, with a traceback, when a heartbeat fails.
_HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat."


class QuietHeartbeats(logging.Filter):
    """In our workers, a heartbeat that could not reach the scheduler is DEBUG.

    Dask's ``Worker.close()`` closes its connections under a heartbeat in
    flight, which then fails ("ConnectionPool closing") and is logged as an
    ERROR with three chained tracebacks, on the caller's stderr (workers
    share it): at the end of a program that did nothing wrong, and the
    more often the busier the machine. Our scheduler runs in the caller's
    process, so the other way a heartbeat fails, the scheduler gone, also
    means the caller closed the cluster or died, and the worker is ending.
    """

    def __init__(self) -> None:
        super().__init__()
        self._logger = logging.getLogger("distributed.worker")

    def install(self) -> None:
        self._logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or record.msg != _HEARTBEAT_FAILED:
            return True
        # Handled by this logger's filters again, now as DEBUG: let through.
        self._logger.debug(record.msg, exc_info=record.exc_info)
        return False
