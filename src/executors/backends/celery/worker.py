"""A Celery app for workers that serve executors, and the private worker's hooks.

For a deployment without a Celery app of its own, the workers run::

    CELERY_BROKER_URL=redis://... CELERY_RESULT_BACKEND=redis://... \\
        celery -A executors.backends.celery.worker worker

(Celery reads both variables itself; ``CELERY_CONFIG_MODULE`` may name a
module of further settings.) A deployment with its own app includes
:mod:`executors.backends.celery.task` instead.

The private deployment that ``create("celery")`` starts runs this same app,
with ``EXECUTORS_CELERY_PRIVATE`` set to a JSON object: the caller's pid,
the Redis server's pid, the private folder, a pipe to report on, a pipe
holding the broker URL, the file holding the pickled initializer, and the
caller's import path and working directory. Then, and only then, this
module, as the worker imports it:

* reads the broker URL (with the Redis password) from its pipe, never
  from the environment, and removes the variable: nothing a task or its
  subprocesses can read holds the password;
* reads the pickled ``(initializer, initargs, worker spec)`` and deletes
  the file: the bytes stay in this process's memory, and every pool
  process forked later gets them;
* starts a thread that waits for the caller to end and then kills the
  Redis server, removes the private folder and ends this process, so a
  caller killed with SIGKILL or SIGTERM leaves nothing behind;

and connects four hooks:

* **worker_process_init** (each pool process): exit with the caller and
  with the main process (:func:`executors._parentwatch.exit_with_parent`),
  take the caller's import path and working directory (the main process
  runs in the private folder, so that nothing planted in the caller's
  working directory is imported by Celery), start as a worker of the
  executor (issue 26: its slot is billiard's index, its log records go to
  the caller, its thread caps apply), then run the user's initializer; if
  it raises, report it, print the traceback and exit with
  ``INITIALIZER_FAILED_EXITCODE``.
* **worker_process_shutdown** (a pool process leaving normally: shutdown,
  recycling): run the finalizer and send the last log records.
* **worker_ready**: tell the caller the worker consumes, and look for
  dead pool processes every :data:`MAINTAIN_SECONDS` (any worker of this
  app, private or not; see :func:`_maintain_often`).
* **task_internal_error** (a pool process could not store a result): if
  Redis refused it for its memory cap, tell the caller which task lost its
  result, so that its future fails instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.process
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from typing import Any, NoReturn

import billiard.process
from celery import Celery, signals

from ..._bootstrap import INITIALIZER_FAILED_EXITCODE
from ..._parentwatch import PARENT_GONE_EXITCODE, exit_with_parent, wait_until_gone
from ..._workers import leave_process

# The generic task: shared_task registers it with this app too.
from . import task as _task  # noqa: F401

__all__ = [
    "MAINTAIN_SECONDS",
    "PRIVATE_CONFIG",
    "PRIVATE_VARIABLE",
    "RESULT_REFUSED",
    "app",
    "refused_for_memory",
]

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
    # A net only: the caller deletes each result once its future settles;
    # one that nobody reads (its executor broke first) expires.
    "result_expires": 3600,
}

# Settings only the private worker takes (the caller's app has its own
# transport options).
_WORKER_CONFIG: dict[str, Any] = {
    # No "unacked" bookkeeping in Redis for each message a worker takes (a
    # write that a full Redis refuses, losing the message): a private
    # worker that dies breaks the executor, nothing is ever redelivered.
    "broker_transport_options": {"ack_emulation": False},
}
#: How often the worker's main process looks for pool processes that died.
#: Celery's prefork pool learns of a death when the process's sentinel pipe
#: closes, but a dying process closes its pipes before its exit status can
#: be read; a pool that looks in between finds it alive and waits for its
#: own next look, 5 s later. The task's future waited that long (0-5 s, most
#: often on a busy machine). A look costs one ``waitpid`` per pool process.
MAINTAIN_SECONDS = 0.25
#: The event a pool process reports when Redis refused a result for its
#: memory cap.
RESULT_REFUSED = "result-refused"
# The longest line written to the report pipe: a write of at most PIPE_BUF
# (4096) bytes is atomic, so lines of several pool processes never mix.
_LINE_BYTES = 4000

app = Celery("executors", set_as_current=False)
# A deployment configures these workers with a module of Celery settings
# named by CELERY_CONFIG_MODULE, as any Celery app.
app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True)

_private: dict[str, Any] | None = None
# The pickled (initializer, initargs), read once in the main process.
_initializer: bytes | None = None


def _take_private() -> dict[str, Any] | None:
    """Read the private deployment's settings and remove them from view."""
    setting = os.environ.pop(PRIVATE_VARIABLE, None)
    if not setting:
        return None
    private: dict[str, Any] = json.loads(setting)
    secret = private.pop("secret")
    with os.fdopen(secret, "rb") as pipe:
        url = pipe.read().decode()
    # Celery reads these variables before its own settings: they must not
    # name another deployment (the caller's environment may hold them).
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(name, None)
    app.conf.update(
        {**PRIVATE_CONFIG, **_WORKER_CONFIG, "broker_url": url, "result_backend": url}
    )
    return private


def _take_initializer(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as file:
        payload = file.read()
    # Its arguments may be secrets: off the disk before any task runs.
    os.unlink(path)
    return payload


def _report(record: dict[str, Any]) -> None:
    """Send one record to the caller, shortened to one atomic write."""
    if _private is None:
        return
    line = json.dumps(record).encode()
    while len(line) >= _LINE_BYTES:
        # Shorten the longest text, never the encoded line: cut JSON is
        # not JSON (and a non-ASCII character takes 6 bytes as \uXXXX).
        key = max(
            (k for k, v in record.items() if isinstance(v, str)),
            key=lambda k: len(record[k]),
        )
        text = record[key]
        keep = len(text) * (_LINE_BYTES - 100) // len(line) - 1
        record = {**record, key: _shorten(text, max(keep, 0), key == "text")}
        line = json.dumps(record).encode()
    # OSError: the caller is gone, and its watch ends this process.
    with contextlib.suppress(OSError):
        os.write(_private["report"], line + b"\n")


def _shorten(text: str, keep: int, tail: bool) -> str:
    """``text`` cut to ``keep`` characters, marked (a traceback keeps its end)."""
    if len(text) <= keep:
        return text
    if tail:
        return "[...]" + text[len(text) - keep + 5 :] if keep > 5 else ""
    return text[: max(keep - 5, 0)] + "[...]"


def _end_with_caller(caller: int, redis_pid: int, folder: str) -> None:
    wait_until_gone(caller)
    with contextlib.suppress(OSError):
        os.kill(redis_pid, signal.SIGKILL)
    # The socket, the Redis log and anything else of the deployment.
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(PARENT_GONE_EXITCODE)


def _start_private() -> None:
    global _private, _initializer
    _private = _take_private()
    if _private is None:
        return
    # Started as the worker imports this module, before Celery's slow start:
    # a caller that dies now still leaves nothing.
    threading.Thread(
        target=_end_with_caller,
        args=(_private["caller"], _private["redis"], _private["folder"]),
        name="executors-caller-watch",
        daemon=True,
    ).start()
    _initializer = _take_initializer(_private.get("init"))


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    _maintain_often(sender)
    _report({"event": "ready", "pid": os.getpid()})


def _maintain_often(consumer: Any) -> None:
    """Have the prefork pool look for dead processes every MAINTAIN_SECONDS."""
    hub = getattr(consumer, "hub", None)
    task_pool = getattr(consumer, "pool", None)
    if hub is None or not hasattr(getattr(task_pool, "_pool", None), "maintain_pool"):
        return  # not the prefork pool in an event loop: nothing to hurry

    def maintain() -> None:
        # Read each time: a pool restart replaces billiard's pool.
        billiard_pool = getattr(task_pool, "_pool", None)
        if billiard_pool is not None:
            billiard_pool.maintain_pool()  # a no-op once the pool is closing

    hub.call_repeatedly(MAINTAIN_SECONDS, maintain)


def _enter_callers_place(private: dict[str, Any]) -> None:
    """The caller's import path, working directory and TMPDIR, for its tasks."""
    path = private["path"]
    folder = os.path.realpath(private["folder"])
    own = [p for p in sys.path if os.path.realpath(p) != folder]
    sys.path[:] = [*path, *(p for p in own if p not in path)]
    with contextlib.suppress(OSError):
        os.chdir(private["cwd"])
    if private["tmpdir"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = private["tmpdir"]
    tempfile.tempdir = None  # found again, from the caller's TMPDIR


def _on_process_init(**_: Any) -> None:
    if _private is None:
        return
    exit_with_parent(_private["caller"])
    exit_with_parent(os.getppid())
    _enter_callers_place(_private)
    if _initializer is None:
        return
    pid = os.getpid()
    try:
        # After _enter_callers_place: the pickles may name the caller's
        # modules.
        initializer, initargs, spec = pickle.loads(_initializer)
    except BaseException as exc:
        _init_failed(pid, exc)
    if spec is not None:
        # Billiard numbers its pool processes; a replacement takes the
        # index of the process it replaces (Pool._avail_index).
        spec.start(index=billiard.process.current_process().index)
        _let_tasks_start_processes()
    if initializer is None:
        return
    _report({"event": "init", "pid": pid})
    try:
        initializer(*initargs)
    except BaseException as exc:
        _init_failed(pid, exc)
    _report({"event": "init-ok", "pid": pid})


def _let_tasks_start_processes() -> None:
    """Let a task start a ``multiprocessing`` pool of its own (nested executors).

    Billiard makes its pool process multiprocessing's current process too,
    with billiard's authentication key, which refuses to be pickled outside
    billiard's own spawning: a stdlib pool started by a task with spawn or
    forkserver failed with "Pickling an AuthenticationString object is
    disallowed". The same key, as the stdlib's type.
    """
    stdlib_key: Any = vars(multiprocessing.process)["AuthenticationString"]
    config = vars(multiprocessing.current_process())["_config"]
    key = config.get("authkey")
    if key is not None and not isinstance(key, stdlib_key):
        config["authkey"] = stdlib_key(bytes(key))


def _init_failed(pid: int, exc: BaseException) -> NoReturn:
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    _report(
        {
            "event": "init-failed",
            "pid": pid,
            "summary": _shorten(summary, 500, tail=False),
            "text": _shorten(text, 3000, tail=True),
        }
    )
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(INITIALIZER_FAILED_EXITCODE)


def _on_process_shutdown(**_: Any) -> None:
    # A pool process leaving normally (shutdown, recycling): billiard ends
    # it with os._exit, which runs no atexit hook, so its finalizer and its
    # last log records go here.
    leave_process()


def _on_internal_error(
    task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    # Storing the result failed: Celery logs it, but the caller, waiting
    # for that result, would wait forever.
    if _private is None or task_id is None or not refused_for_memory(exception):
        return
    _report({"event": RESULT_REFUSED, "pid": os.getpid(), "task": task_id})


def refused_for_memory(error: object) -> bool:
    """Whether ``error`` is Redis refusing a write for its ``maxmemory`` cap.

    By name: redis-py raises ``OutOfMemoryError``, and Celery rebuilds it
    from a stored failure as a class of that name from no module.
    """
    seen = 0
    while isinstance(error, BaseException) and seen < 10:
        if type(error).__name__ == "OutOfMemoryError" or "'maxmemory'" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


_start_private()

# Connected here, not by decorator: Celery's decorators are untyped.
signals.worker_ready.connect(_on_worker_ready)
signals.worker_process_init.connect(_on_process_init)
signals.worker_process_shutdown.connect(_on_process_shutdown)
signals.task_internal_error.connect(_on_internal_error)
