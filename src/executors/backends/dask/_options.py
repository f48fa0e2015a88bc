"""Checking the ``dask`` backend's options, before anything starts."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import distributed
from distributed.security import Security

from ..._options import check_initializer, check_max_workers, cpu_count
from ._cluster import NO_TLS_MESSAGE, looks_like_host_port, tls_available

__all__ = ["DEFAULT_ALLOWED_FAILURES", "LocalOptions", "check_options"]

#: Retries of a task whose worker died, on the cluster we start. Dask's
#: default (3) makes a task that always crashes kill four workers, each
#: restart costing a second or two; 1 still forgives one unlucky death (an
#: OOM kill caused by a neighbour) and fails a crashing task within seconds.
DEFAULT_ALLOWED_FAILURES = 1

# Options of LocalCluster that the backend sets itself: its size and shape,
# and what keeps it private (127.0.0.1 only, TLS, no dashboard by default).
_RESERVED_CLUSTER_OPTIONS = frozenset(
    {
        "n_workers",
        "threads_per_worker",
        "processes",
        "host",
        "ip",
        "interface",
        "protocol",
        "security",
        "dashboard_address",
        "asynchronous",
        "loop",
    }
)

# Start methods for the local cluster's workers; fork is left out on purpose
# (see _options.DEFAULT_START_METHOD).
_START_METHODS = tuple(
    m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
)


@dataclass(frozen=True)
class LocalOptions:
    """The validated options (those of the local cluster are unused remotely)."""

    workers: int
    allowed_failures: int
    dashboard_address: str | None
    start_method: str | None
    cluster_options: dict[str, Any]


def check_options(
    *,
    max_workers: int | None,
    address: str | None,
    client: Any,
    initializer: Any,
    initargs: tuple[Any, ...],
    allowed_failures: int | None,
    max_in_flight: int | None,
    dashboard_address: str | None,
    mp_context: Any,
    cluster_options: Mapping[str, Any] | None,
    security: Security | None,
) -> LocalOptions:
    """Validate every option of ``DaskExecutor``; raise as ``create()`` should."""
    local = address is None and client is None
    if address is not None and client is not None:
        raise ValueError("the 'dask' backend takes address= or client=, not both")
    if address is not None and (not isinstance(address, str) or not address):
        raise TypeError(f"address must be a scheduler address (str), got {address!r}")
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(
                f"client must be a distributed.Client, got {type(client).__name__}"
            )
        if client.asynchronous:
            raise ValueError("the 'dask' backend needs a synchronous Client")
    if not local:
        for name, value in (
            ("max_workers", max_workers),
            ("allowed_failures", allowed_failures),
            ("dashboard_address", dashboard_address),
            ("mp_context", mp_context),
            ("cluster_options", cluster_options),
        ):
            if value is not None:
                raise ValueError(
                    f"{name} configures the local cluster of the 'dask' "
                    "backend; with address= or client= the remote cluster's "
                    "own settings apply"
                )
    workers = check_max_workers(max_workers, default=cpu_count())
    check_initializer(initializer, initargs)
    if allowed_failures is None:
        allowed_failures = DEFAULT_ALLOWED_FAILURES
    if not isinstance(allowed_failures, int) or isinstance(allowed_failures, bool):
        raise TypeError(f"allowed_failures must be an int, got {allowed_failures!r}")
    if allowed_failures < 0:
        raise ValueError("allowed_failures must be >= 0")
    if max_in_flight is not None and (
        not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool)
    ):
        raise TypeError(f"max_in_flight must be an int or None, got {max_in_flight!r}")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError("max_in_flight must be >= 1")
    if security is not None and not isinstance(security, Security):
        raise TypeError(
            "security must be a distributed.security.Security or None, "
            f"got {type(security).__name__}"
        )
    if security is not None and client is not None:
        raise ValueError(
            "security= does not apply with client=: the client already has "
            "its own security settings"
        )
    if local and security is None and not tls_available():
        raise ImportError(NO_TLS_MESSAGE)
    return LocalOptions(
        workers,
        allowed_failures,
        _check_dashboard(dashboard_address),
        _check_start_method(mp_context),
        _check_cluster_options(cluster_options),
    )


def _check_dashboard(dashboard_address: str | None) -> str | None:
    if dashboard_address is None:
        return None
    if not isinstance(dashboard_address, str):
        raise TypeError(
            f"dashboard_address must be a str or None, got {dashboard_address!r}"
        )
    if not looks_like_host_port(dashboard_address):
        # Checked now: a bad address would otherwise surface only when the
        # cluster starts, as a broken executor rather than a bad option.
        raise ValueError(
            "dashboard_address must be ':PORT' or 'HOST:PORT', such as "
            f"'127.0.0.1:8787', got {dashboard_address!r}"
        )
    if dashboard_address.startswith(":"):
        # Dask binds a bare port on every interface; serving the dashboard
        # beyond this machine must be asked for by a host.
        return "127.0.0.1" + dashboard_address
    return dashboard_address


def _check_start_method(mp_context: Any) -> str | None:
    if isinstance(mp_context, multiprocessing.context.BaseContext):
        mp_context = mp_context.get_start_method()
    if mp_context is not None and not isinstance(mp_context, str):
        raise TypeError(
            "mp_context must be None, a start method name or a multiprocessing "
            f"context, got {mp_context!r}"
        )
    if mp_context is not None and mp_context not in _START_METHODS:
        raise ValueError(
            f"mp_context {mp_context!r} is not supported by the 'dask' backend; "
            f"choose one of {', '.join(map(repr, _START_METHODS))} (fork is "
            "unsafe: the cluster's event loop runs in a thread of this process)"
        )
    return mp_context


def _check_cluster_options(cluster_options: Any) -> dict[str, Any]:
    if cluster_options is not None and not isinstance(cluster_options, Mapping):
        kind = type(cluster_options).__name__
        raise TypeError(f"cluster_options must be a mapping, got {kind}")
    options = dict(cluster_options or {})
    reserved = sorted(_RESERVED_CLUSTER_OPTIONS & set(options))
    if reserved:
        raise ValueError(
            f"cluster_options may not set {', '.join(reserved)}: the 'dask' "
            "backend sets them (use max_workers and dashboard_address)"
        )
    return options
