"""Programs that the fault tests run as real subprocesses, and their harness.

Each script is a small, realistic user program (Ctrl-C in a ``map``, exit
with work pending, ``submit`` from an ``atexit`` hook). The harness starts
one, reads its stdout line by line with a bound, and tears down the whole
process tree it started if a check fails (the harness is
``tests/_programs.py``, shared with the tests that write their programs
inline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _programs import Program, alive

__all__ = ["HERE", "Script", "alive", "options_json"]

HERE = Path(__file__).resolve().parent


class Script(Program):
    """One of the scripts of this directory, running (see :class:`Program`).

    Args:
        name: The script's file name in this directory.
        *args: Its command-line arguments.
        new_session: Start it in a session and process group of its own, as
            a shell starts a foreground job: ``os.killpg(proc.pid, SIGINT)``
            then reaches it and every process it starts, as Ctrl-C does.
    """

    def __init__(self, name: str, *args: str, new_session: bool = False) -> None:
        super().__init__(str(HERE / name), *args, new_session=new_session)


def options_json(options: dict[str, Any]) -> str:
    """The test options of a backend, as the scripts take them."""
    return json.dumps(options)
