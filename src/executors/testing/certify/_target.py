"""The executor under certification: how to build it, what it offers.

Used in the child processes (the probe and the pytest run), never in the
command's own process: importing a target may start threads or fail, and
the command must outlive both.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ..._capabilities import Capabilities

__all__ = ["build_callable", "decorate", "features_of", "is_ours", "make_factory"]


def build_callable(target: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(build, signature_source)`` for ``module:callable`` or a backend name.

    ``build(**options)`` returns a new executor; ``signature_source`` is what
    to read the accepted options from (a backend's class, for a name).
    """
    if ":" in target:
        module_name, _, attribute = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{target} is not callable: {obj!r:.80}")
        return obj, obj
    from ... import _registry, create

    cls = _registry.backend_class(target)

    def build(**options: Any) -> Any:
        return create(target, **options)

    return build, cls


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes the keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # unknown: let the call say
    return name in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def _has_parameter(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def by_position(
    options: dict[str, Any], fn: Callable[..., Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Split off the options that name ``fn``'s positional-only parameters.

    The command line gives every argument by name (``--kwargs``), so
    ``executors:create`` with ``{"backend": "queue"}`` must become
    ``create("queue")``: its ``backend`` is positional-only.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], options
    args: list[Any] = []
    rest = dict(options)
    for param in params:
        if (
            param.kind is not inspect.Parameter.POSITIONAL_ONLY
            or param.name not in rest
        ):
            break
        args.append(rest.pop(param.name))
    return args, rest


def is_ours(executor: Any) -> bool:
    """Whether the executor declares :class:`executors.Capabilities` itself."""
    return isinstance(getattr(executor, "capabilities", None), Capabilities)


def make_factory(config: dict[str, Any], *, raw: bool = False) -> Callable[..., Any]:
    """The ``executor_factory`` of the suite, for the target in ``config``.

    The target's defaults (``max_workers``, the ``--kwargs``) are merged
    under each test's own options. A foreign executor is given the
    attributes the suite reads (``capabilities`` as assumed for the run,
    ``backend``, ``max_workers``) unless ``raw``.
    """
    build, source = build_callable(config["target"])
    defaults: dict[str, Any] = {}
    if config.get("workers") and accepts(source, "max_workers"):
        defaults["max_workers"] = config["workers"]
    defaults.update(config.get("kwargs") or {})
    caps_fields = config.get("capabilities")
    caps = Capabilities(**caps_fields) if caps_fields else None
    label = str(config.get("label") or config["target"])

    def make(**options: Any) -> Any:
        args, kwargs = by_position({**defaults, **options}, build)
        executor = build(*args, **kwargs)
        if not raw and caps is not None and not is_ours(executor):
            decorate(executor, caps, label, config.get("workers") or 1)
        return executor

    return make


def decorate(executor: Any, caps: Capabilities, label: str, workers: int) -> None:
    """Give a foreign executor the attributes the behaviour classes read.

    Only attributes it lacks: its behaviour is never touched.
    """
    values = {
        "capabilities": caps,
        "backend": label,
        "max_workers": getattr(executor, "_max_workers", None) or workers,
    }
    for name, value in values.items():
        if hasattr(executor, name):
            continue
        try:
            setattr(executor, name, value)
        except AttributeError as exc:
            raise TypeError(
                f"cannot give {type(executor).__name__} the attribute {name!r} "
                "the suite reads (does it use __slots__?): certify an adapter "
                "that wraps it instead"
            ) from exc


def features_of(executor: Any, signature_source: Callable[..., Any]) -> dict[str, bool]:
    """Which parts of this library's API beyond the stdlib's the target has."""
    from ..._protocol import Executor

    has_map = callable(getattr(executor, "map", None))
    return {
        "protocol": is_ours(executor) and isinstance(executor, Executor),
        "map_unordered": callable(getattr(executor, "map_unordered", None)),
        "map_buffersize": has_map and _has_parameter(executor.map, "buffersize"),
        "map_progress": has_map and _has_parameter(executor.map, "progress"),
        "error_classes": is_ours(executor),
        "initializer": accepts(signature_source, "initializer"),
        "max_pending": accepts(signature_source, "max_pending"),
        "kill_task": callable(getattr(executor, "kill_task", None)),
        "terminate_workers": all(
            callable(getattr(executor, name, None))
            for name in ("terminate_workers", "kill_workers")
        ),
        # The stdlib's since Python 3.9; loky's shutdown lacks it.
        "shutdown_cancel_futures": accepts(executor.shutdown, "cancel_futures"),
    }


def capability_fields() -> list[str]:
    """The fields of :class:`executors.Capabilities`, in declaration order."""
    return [field.name for field in dataclasses.fields(Capabilities)]
