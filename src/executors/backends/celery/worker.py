"""A Celery app for workers that serve executors, and the private worker's hooks.

For a deployment without a Celery app of its own, the workers run::

    CELERY_BROKER_URL=redis://... CELERY_RESULT_BACKEND=redis://... \\
        celery -A executors.backends.celery.worker worker

(Celery reads both variables itself; ``CELERY_CONFIG_MODULE`` may name a
module of further settings.) A deployment with its own app includes
:mod:`executors.backends.celery.task` instead.

The private deployment that ``create("celery")`` starts runs this same app,
with ``EXECUTORS_CELERY_PRIVATE`` set to a JSON object: the caller's pid,
the Redis server's pid, a pipe to report on and the file holding the
pickled initializer. Then, and only then, three hooks are connected:

* **worker_init** (the main process): a thread waits for the caller to end
  and then kills the Redis server and this process, so a caller killed with
  SIGKILL leaves nothing running.
* **worker_process_init** (each pool process): exit with the caller and
  with the main process (:func:`executors._parentwatch.exit_with_parent`),
  then run the user's initializer; if it raises, report it, print the
  traceback and exit with ``INITIALIZER_FAILED_EXITCODE``.
* **worker_ready**: tell the caller the worker consumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sys
import threading
import traceback
from typing import Any

from celery import Celery, signals

from ..._outcome import INITIALIZER_FAILED_EXITCODE
from ..._parentwatch import PARENT_GONE_EXITCODE, exit_with_parent

# The generic task: shared_task registers it with this app too.
from . import task as _task  # noqa: F401

__all__ = ["PRIVATE_CONFIG", "PRIVATE_VARIABLE", "app"]

#: The environment variable that marks a worker of a private deployment.
PRIVATE_VARIABLE = "EXECUTORS_CELERY_PRIVATE"

#: The Celery settings of a private deployment, the caller's and the
#: worker's alike.
PRIVATE_CONFIG: dict[str, Any] = {
    # JSON, not pickle: Celery refuses to run a worker as root that accepts
    # pickle, and the calls are pickled bytes of their own anyway (sent as
    # base64 text, see executors.backends.celery.task).
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    # Billiard waits this long after a pool process died before it fails
    # the task with WorkerLostError (Celery's default is 10 s): a result
    # written just before the death has long arrived by then.
    "worker_lost_wait": 1.0,
    # One message per free slot: the caller hands over no more anyway.
    "worker_prefetch_multiplier": 1,
    "worker_redirect_stdouts": False,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,
    "broker_connection_retry_on_startup": True,
    "result_expires": 3600,
}

app = Celery("executors", set_as_current=False)
# A deployment configures these workers with a module of Celery settings
# named by CELERY_CONFIG_MODULE, as any Celery app.
app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True)

_private: dict[str, Any] | None = None
_setting = os.environ.get(PRIVATE_VARIABLE)
if _setting:
    _private = json.loads(_setting)
    app.conf.update(PRIVATE_CONFIG)


def _report(record: dict[str, Any]) -> None:
    """Send one record to the caller (a pipe write is atomic up to 4 KiB)."""
    if _private is None:
        return
    line = json.dumps(record).encode()[:4000] + b"\n"
    # OSError: the caller is gone, and its watch ends this process.
    with contextlib.suppress(OSError):
        os.write(_private["report"], line)


def _wait_for(pid: int) -> None:
    """Return once process ``pid`` has ended."""
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        import time

        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not poller.poll():
        pass


def _end_with_caller(caller: int, redis_pid: int) -> None:
    _wait_for(caller)
    with contextlib.suppress(OSError):
        os.kill(redis_pid, signal.SIGKILL)
    os._exit(PARENT_GONE_EXITCODE)


def _on_worker_init(**_: Any) -> None:
    if _private is None:
        return
    threading.Thread(
        target=_end_with_caller,
        args=(_private["caller"], _private["redis"]),
        name="executors-caller-watch",
        daemon=True,
    ).start()


def _on_worker_ready(**_: Any) -> None:
    _report({"event": "ready", "pid": os.getpid()})


def _on_process_init(**_: Any) -> None:
    if _private is None:
        return
    exit_with_parent(_private["caller"])
    exit_with_parent(os.getppid())
    path = _private.get("init")
    if not path:
        return
    pid = os.getpid()
    _report({"event": "init", "pid": pid})
    try:
        with open(path, "rb") as file:
            initializer, initargs = pickle.load(file)
        initializer(*initargs)
    except BaseException as exc:
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        _report(
            {
                "event": "init-failed",
                "pid": pid,
                "summary": summary[:500],
                "text": text[-3000:],
            }
        )
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(INITIALIZER_FAILED_EXITCODE)
    _report({"event": "init-ok", "pid": pid})


# Connected here, not by decorator: Celery's decorators are untyped.
signals.worker_init.connect(_on_worker_init)
signals.worker_ready.connect(_on_worker_ready)
signals.worker_process_init.connect(_on_process_init)
