"""Backend names, how to import them, and :func:`create`.

The registry holds import strings, never imported modules: ``import
executors`` costs nothing, and a backend's heavy dependency (joblib, dask) is
imported only when that backend is chosen. Third-party backends register under
the ``executors.backends`` entry-point group; entry points are read the first
time a name is not found (and by :func:`list_backends`), never at import, and
a plugin can never replace a built-in name.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._capabilities import Capabilities
from ._control import OPTION_NAMES, split_options
from ._errors import BackendNotFoundError, BackendNotInstalledError

if TYPE_CHECKING:
    from ._base import BaseExecutor

__all__ = ["BackendInfo", "create", "list_backends"]

ENTRY_POINT_GROUP = "executors.backends"
ENV_VAR = "EXECUTORS_BACKEND"
DEFAULT_BACKEND = "process"


@dataclass(frozen=True)
class _Spec:
    name: str
    target: str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    summary: str = ""
    builtin: bool = True


_BUILTINS: dict[str, _Spec] = {
    spec.name: spec
    for spec in (
        _Spec(
            "process",
            "executors.backends.process:ProcessExecutor",
            summary="the stdlib ProcessPoolExecutor",
        ),
        _Spec(
            "mp_pool",
            "executors.backends.mp_pool:MpPoolExecutor",
            summary="multiprocessing.Pool, made hang-free",
        ),
        _Spec(
            "queue",
            "executors.backends.queue:QueueExecutor",
            summary="our own queue worker pool; survives worker death",
        ),
        _Spec(
            "joblib",
            "executors.backends.joblib:JoblibExecutor",
            requires=("joblib",),
            extra="joblib",
            summary="joblib's loky workers",
        ),
        _Spec(
            "dask",
            "executors.backends.dask:DaskExecutor",
            requires=("dask", "distributed"),
            extra="dask",
            summary="a Dask cluster: local by default, remote by address",
        ),
        _Spec(
            "celery",
            "executors.backends.celery._executor:CeleryExecutor",
            requires=("celery", "redis"),
            extra="celery",
            summary="a Celery deployment: private by default, yours by app/broker",
        ),
        _Spec(
            "thread",
            "executors.backends.thread:ThreadExecutor",
            summary="a thread pool, as the stdlib ThreadPoolExecutor",
        ),
        _Spec(
            "inline",
            "executors.backends.inline:InlineExecutor",
            summary="runs each task in the caller, for debugging",
        ),
    )
}

_plugins: dict[str, _Spec] | None = None
_plugins_lock = threading.Lock()


def _entry_points() -> dict[str, _Spec]:
    global _plugins
    with _plugins_lock:
        if _plugins is None:
            from importlib.metadata import entry_points

            found: dict[str, _Spec] = {}
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in _BUILTINS or ep.name in found:
                    # A plugin must never silently replace a built-in name.
                    continue
                found[ep.name] = _Spec(ep.name, ep.value, builtin=False)
            _plugins = found
        return _plugins


def _spec(name: str) -> _Spec:
    spec = _BUILTINS.get(name) or _entry_points().get(name)
    if spec is None:
        names = ", ".join(sorted([*_BUILTINS, *_entry_points()]))
        raise BackendNotFoundError(
            f"no executors backend named {name!r}; the known backends are: {names}"
        )
    return spec


def _is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # ValueError: the module was imported and then set to None in sys.modules.
        return False


def _missing(spec: _Spec) -> list[str]:
    return [mod for mod in spec.requires if not _is_installed(mod)]


def _install_hint(spec: _Spec) -> str | None:
    return f'pip install "executors[{spec.extra}]"' if spec.extra else None


def backend_class(name: str) -> type[BaseExecutor]:
    """Import and return the executor class registered as ``name``.

    Raises:
        BackendNotFoundError: no such backend (the message lists the names).
        BackendNotInstalledError: its optional dependencies are missing (the
            message gives the ``pip install`` line).
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name (str) or None, got {name!r}")
    spec = _spec(name)
    missing = _missing(spec)
    if missing:
        raise BackendNotInstalledError(
            f"the {name!r} backend needs {', '.join(missing)}, which is not "
            f"installed; install it with: {_install_hint(spec)}",
            name=missing[0],
        )
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
        # Inside the try: a backend package imports its executor module on
        # first use, so a broken install fails here, not at the import.
        cls: type[BaseExecutor] = getattr(module, attr)
    except ImportError as exc:
        hint = _install_hint(spec)
        raise BackendNotInstalledError(
            f"the {name!r} backend could not be imported ({exc})"
            + (f"; install it with: {hint}" if hint else ""),
            name=exc.name,
        ) from exc
    return cls


def _check_options(name: str, cls: type[BaseExecutor], options: dict[str, Any]) -> None:
    accepted = _accepted_options(cls)
    if accepted is None:
        return
    for option in options:
        if option not in accepted:
            raise TypeError(
                f"the {name!r} backend does not support the option {option!r}; "
                f"its options are: {', '.join(accepted)}"
            )


@functools.cache
def _accepted_options(cls: type[BaseExecutor]) -> tuple[str, ...] | None:
    """The keyword options ``cls`` takes; None if it takes any (``**kwargs``).

    Read once per class: reading a signature costs about 20 µs, a tenth of
    creating a thread pool.
    """
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    accepted = [
        p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    if cls.capabilities.task_control:
        accepted += [name for name in OPTION_NAMES if name not in accepted]
    return tuple(accepted)


def create(backend: str | None = None, /, **options: Any) -> BaseExecutor:
    """Create an executor for the named backend.

    Args:
        backend: A backend name (see :func:`list_backends`). ``None`` reads
            the ``EXECUTORS_BACKEND`` environment variable, else ``"process"``.
        **options: Keyword options of that backend. The common ones keep the
            stdlib's names and meanings: ``max_workers``, ``initializer``,
            ``initargs``, ``max_tasks_per_child``, ``mp_context``; every
            backend takes ``max_pending`` (``submit`` waits while that many
            of its futures are unfinished; ``None``, the default: no bound);
            and every
            backend that declares ``capabilities.task_control`` takes
            ``task_timeout``, ``retries``, ``retry_on`` and ``retry_delay``
            (see :func:`executors.with_options`).

    Returns:
        A running executor: an instance of
        :class:`concurrent.futures.Executor` that satisfies
        :class:`executors.Executor`.

    Raises:
        BackendNotFoundError: unknown name (a ``LookupError``).
        BackendNotInstalledError: its extra is missing (an ``ImportError``).
        TypeError: an option the backend does not support, or of a wrong type.
        ValueError: an option value out of range.
    """
    if backend is None:
        backend = os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    cls = backend_class(backend)
    if cls.capabilities.process_isolation:
        # Before any worker starts: a script without its __main__ guard
        # fails here, and a worker re-running it exits here.
        from ._mainmodule import check_create

        check_create(cls, backend, options)
    # Task control is the core's, the same on every backend that declares
    # it: checked here, before any worker starts.
    options, task_options = split_options(dict(options))
    if task_options is not None and not cls.capabilities.task_control:
        raise TypeError(
            f"the {backend!r} backend does not support task_timeout, retries, "
            "retry_on or retry_delay (its capabilities.task_control is false)"
        )
    _check_options(backend, cls, options)
    executor = cls(**options)
    if task_options is not None:
        executor._set_task_options(task_options)
    return executor


@dataclass(frozen=True)
class BackendInfo:
    """One known backend, as :func:`list_backends` reports it.

    Attributes:
        name: The name to pass to :func:`create`.
        available: Whether its dependencies are installed.
        install_hint: The ``pip install`` line when it is not available.
        capabilities: Its declared capabilities (``None`` if unavailable).
        summary: One line on what it runs on.
        builtin: ``False`` for plugins registered by entry point.
        error: Why it is unavailable, if it is not.
    """

    name: str
    available: bool
    install_hint: str | None
    capabilities: Capabilities | None
    summary: str
    builtin: bool
    error: str | None = None


def list_backends() -> list[BackendInfo]:
    """Describe every known backend, built-in and plugin.

    Importing an available backend to read its capabilities imports its
    dependency, so this call can take a second when Dask is installed.
    """
    infos = []
    for spec in [*_BUILTINS.values(), *_entry_points().values()]:
        try:
            cls = backend_class(spec.name)
        except ImportError as exc:
            infos.append(
                BackendInfo(
                    spec.name,
                    False,
                    _install_hint(spec),
                    None,
                    spec.summary,
                    spec.builtin,
                    str(exc),
                )
            )
            continue
        summary = spec.summary or (inspect.getdoc(cls) or "").partition("\n")[0]
        infos.append(
            BackendInfo(spec.name, True, None, cls.capabilities, summary, spec.builtin)
        )
    return infos


def _reset_plugins_for_tests() -> None:
    global _plugins
    with _plugins_lock:
        _plugins = None
