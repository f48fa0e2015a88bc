"""The capabilities a certify run records, and what it assumes where none is said.

An executor of this library declares its capabilities; for a foreign one,
each comes from a flag of the command line, from the probe, or from the
table below, in that order.
"""

from __future__ import annotations

from typing import Any

from ._target import capability_fields

__all__ = ["capabilities"]

#: What a foreign executor is assumed to do, where no flag or probe says.
_ASSUMED: dict[str, tuple[bool, str]] = {
    "runs_concurrently": (True, "assumed, as for any pool"),
    "process_isolation": (True, "assumed"),
    "cancels_queued": (
        True,
        "assumed: the stdlib's contract (cancel() of a queued future, "
        "shutdown(cancel_futures=True)); --no-cancels-queued if not",
    ),
    "survives_worker_death": (False, "assumed: the stdlib's behaviour"),
    "retries_lost_tasks": (False, "assumed: the stdlib's behaviour"),
    "task_control": (
        False,
        "assumed: with_options() and task_timeout are this library's API",
    ),
    "stops_timed_out_tasks": (False, "assumed: part of this library's task control"),
    "kills_single_task": (False, "assumed: kill_task() is this library's API"),
    "terminates_workers": (
        False,
        "assumed: terminate_workers() is this library's API",
    ),
    "shared_memory": (
        False,
        "assumed: shm_threshold= and share() are this library's API",
    ),
    "worker_identity": (False, "assumed: worker_id() is this library's API"),
    "worker_finalizer": (False, "assumed: finalizer= is this library's API"),
    "recycles_workers": (
        False,
        "assumed: max_memory_per_child= is this library's API",
    ),
    "forwards_logs": (False, "assumed: forward_logs= is this library's API"),
    "limits_worker_threads": (
        False,
        "assumed: threads_per_worker= is this library's API",
    ),
    "nested_executors": (False, "assumed: not probed"),
}

# A capability flag added to executors.Capabilities before this table names
# it: every flag beyond the stdlib's behaviour is an extension of this
# library, which a foreign executor does not have.
_EXTENSION_ASSUMED = (False, "assumed: an extension of this library's API")


def capabilities(
    result: dict[str, Any], given: dict[str, bool]
) -> dict[str, list[Any]]:
    """``{name: [value, why]}`` for every capability flag, from the probe's result.

    Args:
        result: What the probe child reported (``declared``, ``probed``).
        given: The capability flags of the command line.
    """
    caps: dict[str, list[Any]] = {}
    declared = result.get("declared")
    probed = result.get("probed") or {}
    for name in capability_fields():
        if declared is not None:
            caps[name] = [declared[name], "declared by the executor"]
        elif name in given:
            flag = name.replace("_", "-")
            value = given[name]
            caps[name] = [value, f"given: --{'' if value else 'no-'}{flag}"]
        elif name in probed:
            value, why = probed[name]
            caps[name] = [value, f"probed: {why}"]
        else:
            caps[name] = list(_ASSUMED.get(name, _EXTENSION_ASSUMED))
    return caps
