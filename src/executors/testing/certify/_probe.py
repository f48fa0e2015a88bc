"""Probe a target before it is certified: ``python -m ...certify._probe CONFIG OUT``.

Runs in a child process of the command (a target that hangs or kills its
process cannot take the command with it) and writes a JSON object to OUT:

* ``ours``: the executor declares :class:`executors.Capabilities` itself;
* ``declared``: those capabilities, when it does;
* ``probed``: for a foreign executor, ``{field: [value, evidence]}`` for the
  capabilities a few tasks can reveal;
* ``features``: which parts of this library's API beyond the stdlib's it has;
* ``type``: the executor's class, for the scorecard.

The process ends with ``os._exit``: a foreign pool's exit hook may wait
for a worker the probe killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

from .. import tasks
from ._target import build_callable, features_of, is_ours, make_factory

#: Seconds any one probe may wait for a task.
WAIT = 60.0


def _shutdown_quietly(executor: Any) -> None:
    """Shut down in a thread, bounded: a probe must not hang on its target."""
    thread = threading.Thread(
        target=lambda: executor.shutdown(wait=True, cancel_futures=True), daemon=True
    )
    thread.start()
    thread.join(WAIT / 2)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


def _probe_concurrency(executor: Any) -> tuple[bool, str]:
    start = time.monotonic()
    fut = executor.submit(time.sleep, 1.0)
    took = time.monotonic() - start
    pending = not fut.done()
    fut.result(timeout=WAIT)
    if pending:
        return True, f"submit() returned after {took:.2f} s, before its 1 s task ended"
    return False, f"submit() returned after {took:.2f} s, with its 1 s task done"


def _probe_isolation(executor: Any) -> tuple[bool, str]:
    pid = executor.submit(os.getpid).result(timeout=WAIT)
    if pid != os.getpid():
        return True, f"a task ran in process {pid}, not in the caller ({os.getpid()})"
    return False, "a task ran in the caller's own process"


def _probe_worker_death(executor: Any) -> tuple[bool, str]:
    crash = executor.submit(tasks.exit_abruptly, 3)
    try:
        crash.result(timeout=WAIT)
        outcome = "returned"
    except futures.TimeoutError:
        return False, f"a task calling os._exit(3) was not resolved in {WAIT:.0f} s"
    except BaseException as exc:
        outcome = f"failed with {type(exc).__name__}"
    try:
        value = executor.submit(tasks.add, 1, 1).result(timeout=WAIT)
    except BaseException as exc:
        return False, (
            f"a task calling os._exit(3) {outcome}; the next task: {_describe(exc)}"
        )
    ok = value == 2
    return ok, f"a task calling os._exit(3) {outcome}; the next task ran"


def _probe_lost_task_retry(make: Callable[..., Any]) -> tuple[bool, str]:
    executor = make()
    try:
        with tempfile.TemporaryDirectory(prefix="executors-certify-probe-") as tmp:
            path = Path(tmp) / "pid"
            fut = executor.submit(tasks.write_pid_then_sleep, str(path), 2.0, "ran")
            deadline = time.monotonic() + WAIT
            while not path.exists():
                if time.monotonic() > deadline:
                    return False, "a task that writes its pid never started"
                time.sleep(0.02)
            os.kill(int(path.read_text()), signal.SIGKILL)
            try:
                value = fut.result(timeout=WAIT)
            except BaseException as exc:
                return False, (
                    f"a task whose worker was SIGKILLed failed: {_describe(exc)}"
                )
            return value == "ran", "a task whose worker was SIGKILLed ran again"
    finally:
        _shutdown_quietly(executor)


def probe(config: dict[str, Any]) -> dict[str, Any]:
    """Create the target, read or probe what it does; see the module docstring."""
    make = make_factory(config, raw=True)
    _, source = build_callable(config["target"])
    executor = make()
    result: dict[str, Any] = {
        "type": f"{type(executor).__module__}.{type(executor).__qualname__}",
        "ours": is_ours(executor),
        "features": features_of(executor, source),
        "declared": None,
        "probed": {},
    }
    if result["ours"]:
        result["declared"] = dataclasses.asdict(executor.capabilities)
        _shutdown_quietly(executor)
        return result
    # What a flag gives is not probed: a target that cannot run the probe's
    # tasks can still be certified with flags.
    given: dict[str, bool] = config.get("given") or {}
    probed: dict[str, tuple[bool, str]] = result["probed"]

    def known(name: str, default: bool) -> bool:
        if name in given:
            return given[name]
        return probed[name][0] if name in probed else default

    try:
        if "runs_concurrently" not in given:
            probed["runs_concurrently"] = _probe_concurrency(executor)
        if "process_isolation" not in given:
            probed["process_isolation"] = _probe_isolation(executor)
        isolated = known("process_isolation", True)
        if isolated and "survives_worker_death" not in given:
            probed["survives_worker_death"] = _probe_worker_death(executor)
    finally:
        _shutdown_quietly(executor)
    survives = known("survives_worker_death", False)
    if isolated and survives and "retries_lost_tasks" not in given:
        probed["retries_lost_tasks"] = _probe_lost_task_retry(make)
    return result


def main(argv: list[str]) -> None:
    config_path, out_path = argv
    config = json.loads(Path(config_path).read_text())
    try:
        result = probe(config)
    except BaseException as exc:
        result = {"error": _describe(exc)}
    Path(out_path).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
