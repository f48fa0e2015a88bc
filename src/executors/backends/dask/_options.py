"""Checking the ``dask`` backend's options, before anything starts."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import distributed
from distributed.security import Security

from ..._options import (
    check_initializer,
    check_int,
    check_max_workers,
    cpu_count,
    resolve_mp_context,
)

__all__ = ["LocalOptions", "check_options"]

#: Retries of a task whose worker died, on our cluster: Dask's 3 lets a task
#: that always crashes kill 4 workers; 1 forgives one unlucky death.
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

NO_TLS_MESSAGE = (
    "the 'dask' backend secures its local cluster with TLS and a throw-away "
    "certificate, which needs the 'cryptography' package: "
    'pip install "executors[dask]" (or pip install cryptography). Without it, '
    "pass security=distributed.security.Security() to run the cluster without "
    "TLS, where any user of this machine who finds its ports can run code in "
    "this process and its workers."
)


@dataclass(frozen=True)
class LocalOptions:
    """The checked options of the local cluster (unused with a remote one)."""

    workers: int
    allowed_failures: int
    dashboard_address: str | None
    start_method: str | None
    cluster_options: dict[str, Any]
    security: Security | None


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
    local_only = {
        "max_workers": max_workers,
        "allowed_failures": allowed_failures,
        "dashboard_address": dashboard_address,
        "mp_context": mp_context,
        "cluster_options": cluster_options,
    }
    given = [name for name, value in local_only.items() if value is not None]
    if given and not local:
        raise ValueError(
            f"{given[0]} configures the local cluster of the 'dask' backend; "
            "with address= or client= the remote cluster's own settings apply"
        )
    workers = check_max_workers(max_workers, default=cpu_count())
    check_initializer(initializer, initargs)
    failures = check_int(allowed_failures, "allowed_failures", minimum=0)
    check_int(max_in_flight, "max_in_flight", minimum=1)
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
    if local and security is None and not _tls_available():
        raise ImportError(NO_TLS_MESSAGE)
    return LocalOptions(
        workers,
        DEFAULT_ALLOWED_FAILURES if failures is None else failures,
        _check_dashboard(dashboard_address),
        _check_start_method(mp_context),
        _check_cluster_options(cluster_options),
        security,
    )


def _tls_available() -> bool:
    """Whether ``cryptography`` (for ``Security.temporary()``) is installed."""
    try:
        return importlib.util.find_spec("cryptography") is not None
    except (ImportError, ValueError):  # ValueError: a stubbed-out module
        return False


def _check_dashboard(dashboard_address: str | None) -> str | None:
    if dashboard_address is None:
        return None
    if not isinstance(dashboard_address, str):
        raise TypeError(
            f"dashboard_address must be a str or None, got {dashboard_address!r}"
        )
    host, sep, port = dashboard_address.rpartition(":")
    if not (sep and port.isdigit() and int(port) < 65536 and " " not in host):
        # Now, not as a broken executor when the cluster starts.
        raise ValueError(
            "dashboard_address must be ':PORT' or 'HOST:PORT', such as "
            f"'127.0.0.1:8787', got {dashboard_address!r}"
        )
    if dashboard_address.startswith(":"):
        # Dask binds a bare port on every interface: ask for that by host.
        return "127.0.0.1" + dashboard_address
    if not _is_loopback(host):
        warnings.warn(
            f"dashboard_address={dashboard_address!r} serves Dask's dashboard "
            "beyond this machine, over plain HTTP without authentication: "
            "whoever reaches it sees the cluster's task names, logs and call "
            "stacks. Use '127.0.0.1:PORT' and an SSH tunnel to reach it "
            "from elsewhere",
            UserWarning,
            stacklevel=_caller_level(),
        )
    return dashboard_address


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package."""
    level = 1
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def _check_start_method(mp_context: Any) -> str | None:
    if mp_context is None:
        return None  # Dask's own setting
    method = resolve_mp_context(mp_context).get_start_method()
    if method == "fork":
        raise ValueError(
            "mp_context 'fork' is not supported by the 'dask' backend (the "
            "cluster's event loop runs in a thread of this process); choose "
            "'spawn' or 'forkserver'"
        )
    return method


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
