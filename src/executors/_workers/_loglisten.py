"""The caller's end of log forwarding: one listener thread per executor.

It accepts the workers' connections on a unix socket (in the abstract
namespace on Linux, so no file is left behind even if the caller is
killed; elsewhere in a private ``0700`` folder removed at close), checks
each one's secret, and re-emits every record through
``logging.getLogger(name).handle(record)`` when that logger is enabled
for the record's level: the caller's handlers, levels and filters decide
what is shown. Each worker has one connection, read in order, so its
records arrive in the order it emitted them.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import pickle
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ._slots import abstract_sockets

__all__ = ["CLOSE_SECONDS", "LogListener", "reemit"]

#: How long closing waits for the workers still connected to hang up (they
#: send their last records as they exit).
CLOSE_SECONDS = 5.0
_SECRET_BYTES = 32
_HEADER = struct.Struct(">I")


def reemit(data: dict[str, Any]) -> None:
    """Handle a forwarded record in this process, as if logged here."""
    record = logging.makeLogRecord(data)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class _Peer:
    __slots__ = ("buffer", "sock", "trusted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.trusted = False


class LogListener:
    """Receives the records of an executor's workers and re-emits them.

    Args:
        on_leaving: Called in the listener's thread with ``(pid, slot)``
            when a worker says it will leave soon (it is being recycled),
            so that its replacement can start before it goes.
    """

    def __init__(
        self, on_leaving: Callable[[int, int | None], None] | None = None
    ) -> None:
        self._on_leaving = on_leaving
        self.secret = os.urandom(_SECRET_BYTES)
        self._folder: str | None = None
        if abstract_sockets():
            self.address = f"\0executors-{uuid.uuid4().hex}-logs"
        else:
            # Not "executors-*": that prefix marks the project's own folders.
            self._folder = tempfile.mkdtemp(prefix="exlogs-")
            self.address = os.path.join(self._folder, "logs")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)
        self._server.listen(64)
        self._server.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closing = False
        self._deadline: float | None = None
        self._thread = threading.Thread(
            target=self._run, name="executors-log-listener", daemon=True
        )
        self._thread.start()

    def close(self, wait: bool = True, timeout: float = CLOSE_SECONDS) -> None:
        """Stop accepting workers; end once those connected hang up.

        With ``wait``, returns when they did, or after ``timeout`` (then
        the rest is dropped); without it, the thread ends on its own when
        the last worker leaves.
        """
        self._closing = True
        if wait:
            self._deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if wait:
            self._thread.join(timeout + 1.0)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            for key in list(self._selector.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            with contextlib.suppress(OSError):
                self._wake_w.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _serve(self) -> None:
        peers = 0
        while True:
            if self._closing:
                if self._server.fileno() != -1:
                    self._selector.unregister(self._server)
                    self._server.close()
                deadline = self._deadline
                if peers == 0 or (deadline is not None and time.monotonic() > deadline):
                    return
            timeout = None
            if self._deadline is not None:
                timeout = max(0.0, self._deadline - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._server:
                    with contextlib.suppress(BlockingIOError, OSError):
                        conn, _ = self._server.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ, _Peer(conn))
                        peers += 1
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                elif not self._read(key.data):
                    self._selector.unregister(key.data.sock)
                    key.data.sock.close()
                    peers -= 1

    def _read(self, peer: _Peer) -> bool:
        """Take what ``peer`` sent; False once it hung up or is not ours."""
        try:
            chunk = peer.sock.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        buffer = peer.buffer
        buffer += chunk
        if not peer.trusted:
            if len(buffer) < _SECRET_BYTES:
                return True
            if not hmac.compare_digest(bytes(buffer[:_SECRET_BYTES]), self.secret):
                return False
            del buffer[:_SECRET_BYTES]
            peer.trusted = True
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if len(buffer) < _HEADER.size + size:
                break
            frame = pickle.loads(buffer[_HEADER.size : _HEADER.size + size])
            del buffer[: _HEADER.size + size]
            if frame[0] == "r":
                for data in frame[1]:
                    try:
                        reemit(data)
                    except Exception:  # a handler or filter of the caller's
                        logging.getLogger(__name__).exception(
                            "a forwarded log record could not be handled"
                        )
            elif frame[0] == "l" and self._on_leaving is not None:
                try:
                    self._on_leaving(frame[1], frame[2])
                except Exception:  # the backend's: its pool carries on cold
                    logging.getLogger(__name__).exception(
                        "starting the replacement of worker pid %s failed", frame[1]
                    )
            elif frame[0] == "s":
                # The one byte fits any socket buffer: never blocks.
                with contextlib.suppress(OSError):
                    peer.sock.send(b"\1")
        return True
