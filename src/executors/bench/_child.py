"""The measurement subprocess: one target, a list of workloads.

Run as ``python -m executors.bench._child SPEC EVENTS``. It reads the job
from the JSON file ``SPEC`` and appends one JSON line per event to
``EVENTS``: ``start`` before each workload (so the parent knows what is
running, and since when) and ``result`` after it. The parent bounds each
workload; if one hangs it kills this process and its whole process group,
then starts a new subprocess for the workloads that are left.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._measure import Context

__all__ = ["SHUTDOWN", "main"]

#: The pseudo-workload reported while the shared pool shuts down.
SHUTDOWN = "<shutdown>"


def _emit(events: IO[str], event: dict[str, Any]) -> None:
    events.write(json.dumps(event) + "\n")
    events.flush()


def _run_one(ctx: Context, name: str) -> dict[str, Any]:
    from ._measure import WrongResult
    from ._targets import Unsupported
    from ._workloads import WORKLOADS

    began = time.perf_counter()
    record: dict[str, Any] = {"event": "result", "workload": name}
    try:
        outcome = WORKLOADS[name].run(ctx)
    except Unsupported as exc:
        record.update(status="unsupported", message=str(exc))
    except WrongResult as exc:
        record.update(status="error", message=f"wrong results: {exc}")
    except Exception as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        record.update(
            status="error",
            message="".join(lines).strip(),
            traceback=traceback.format_exc(),
        )
    else:
        record.update(
            status="ok",
            samples=outcome.samples,
            params=outcome.params,
            notes=outcome.notes,
            abandon=outcome.abandon,
            checked=True,
        )
    record["elapsed"] = time.perf_counter() - began
    return record


# This module's own name, also when it runs as __main__ (python -m).
_MODULE = __spec__.name if __spec__ is not None else __name__
_PACKAGE = _MODULE.rpartition(".")[0]


def _preload_harness() -> None:
    """Have a fork server import this module and the tasks before it forks.

    Each worker started under forkserver runs this module again as its
    ``__main__`` (the stdlib preloads a main module run by path, not one
    run with ``-m``): what it imports would be timed as every target's
    worker start-up. Set before any pool starts the server, so for every
    target alike; a backend adds its own modules to the list.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(
            ["__main__", _MODULE, "json", "traceback", f"{_PACKAGE}._tasks"]
        )


def main(argv: list[str] | None = None) -> int:
    """Run the job described by ``argv[0]``, writing events to ``argv[1]``."""
    # Imported here, not above: under spawn and forkserver every worker
    # of every pool measured here imports this module as its __main__ (it
    # runs as `python -m`), and a recycling pool starts one every few tasks.
    from ._config import Config
    from ._measure import Context
    from ._targets import TargetSpec

    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as f:
        job = json.load(f)
    spec = TargetSpec.from_json(job["target"])
    config = Config.from_json(job["config"])
    # Like `python -m`, so `--func mymodule:f` finds mymodule in the
    # directory the benchmark was started from (also in the workers, which
    # inherit sys.path).
    if config.cwd not in sys.path:
        sys.path.insert(0, config.cwd)
    _preload_harness()
    ctx = Context(spec, config)
    with open(args[1], "a", encoding="utf-8") as events:
        for name in job["workloads"]:
            _emit(events, {"event": "start", "workload": name, "time": time.time()})
            record = _run_one(ctx, name)
            _emit(events, record)
            if record.get("abandon") or record["status"] == "error":
                # Not worth a graceful shutdown (thousands of queued tasks),
                # or the pool may be broken: the parent kills the process
                # group and measures what is left in a fresh subprocess.
                _emit(events, {"event": "abandoned"})
                os._exit(0)
        _emit(events, {"event": "start", "workload": SHUTDOWN, "time": time.time()})
        ctx.close()
        _emit(events, {"event": "closed"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
