"""The one generic task that runs every executor call on a Celery worker.

A Celery app serving ``executors`` imports this module (``include=[
"executors.backends.celery.task"]``, or ``imports``); the caller sends each
call to the task by name, so the workers need nothing of the caller's code
but what the call itself pickles::

    caller: dumps((fn, args, kwargs)) --send_task("executors.run_call")--> broker
    worker: run_call(payload) -> (ok, outcome bytes) --> result backend
    caller: decode((ok, outcome bytes)) settles the future

The task never raises: the call's own exception travels inside the outcome,
so a Celery-level ``FAILURE`` always means Celery failed (a worker lost,
a message that could not be decoded), never the user's code.

Bytes travel as they are through a binary serializer (``pickle``,
``msgpack``); through ``json`` or ``yaml`` they travel as base64 text, so a
deployment keeps its default content types.
"""

from __future__ import annotations

import base64
from typing import Any

from celery import shared_task

from ..._outcome import run_call

__all__ = ["TASK_NAME", "from_wire", "run", "to_wire"]

#: The name the caller sends every call to.
TASK_NAME = "executors.run_call"

# Serializers that carry bytes unchanged.
_BINARY = frozenset({"pickle", "msgpack"})


def to_wire(data: bytes, serializer: str) -> bytes | str:
    """``data`` as the given serializer can carry it (bytes or base64 text)."""
    if serializer in _BINARY:
        return data
    return base64.b64encode(data).decode("ascii")


def from_wire(data: bytes | str) -> bytes:
    """The bytes :func:`to_wire` sent."""
    if isinstance(data, str):
        return base64.b64decode(data)
    return bytes(data)


def _run(self: Any, payload: bytes | str) -> tuple[bool, bytes | str]:
    """Run one pickled call; return ``(ok, outcome)`` and never raise."""
    ok, outcome = run_call(from_wire(payload))
    return ok, to_wire(outcome, self.app.conf.result_serializer)


#: The task, registered with every Celery app (``shared_task``). Its result
#: is always stored, whatever the app's ``task_ignore_result``: the caller
#: waits for it.
run: Any = shared_task(name=TASK_NAME, bind=True, ignore_result=False, typing=False)(
    _run
)
