"""A TCP echo server whose work is done by an executor, on any backend.

The classic "socket server backed by a process pool", in two designs:

* ``--mode asyncio`` (the default): one event loop serves every connection
  at once, and each piece of input is upper-cased by a task on the executor.
  A connection costs a coroutine, not a worker, so the server holds many
  more open connections than it has workers (on ``inline``, which runs each
  task in the caller, the loop waits for each task: still correct, one task
  at a time).
* ``--mode classic``: the original design. Each accepted connection is handed
  to a worker for its whole lifetime (``pool.submit(talk, conn, addr)``), and
  the worker runs ``msg = conn.recv(1024); conn.send(msg.upper())`` until the
  client leaves. A connection holds a worker while it is open, so at most
  ``max_workers`` clients are served at a time and the others wait, however
  idle the served ones are. It needs a backend that can pass a socket to its
  worker: ``process``, ``mp_pool``, ``joblib``, ``thread`` and ``inline`` can;
  ``queue`` and ``dask`` cannot, and the server says so and exits.

Protocol (both modes), the classic one: whatever bytes arrive are answered,
upper-cased, as soon as they arrive; no terminator is needed, so the classic
client (``sock.send(b"hello"); sock.recv(1024)``) works, and so does a
line-by-line client such as ``echo_client.py``. Bad input never stops the
server:

* bytes that are not UTF-8 get a one-line ``ERROR ...`` reply (the
  ``UnicodeDecodeError`` raised in the worker comes back unchanged); a
  character split between two reads is put together first;
* input of any length is answered piece by piece: the server reads at most
  ``READ_SIZE`` bytes of a client at a time, and reads no more until that
  piece is answered, so one client cannot make it hold more;
* a client that disconnects mid-message, or before its reply is sent, only
  ends its own connection.

Run it, then talk to it with ``examples/echo_client.py``::

    python examples/echo_server.py --backend process --port 8888
    python examples/echo_server.py --backend process --mode classic --port 8888
    python examples/echo_client.py --port 8888

``--port 0`` picks a free port; the first line printed says which. SIGINT
(Ctrl-C) or SIGTERM stops the server, cancels queued work and shuts the
executor down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from concurrent.futures import BrokenExecutor, Future
from typing import Any

import executors
import executors.aio

HOST = "127.0.0.1"
# Bytes taken from a client at a time (the classic server's recv(1024) is
# smaller): bounds the memory one client can make the server hold.
READ_SIZE = 64 * 1024
# The classic worker reads as the classic server did.
CLASSIC_RECV = 1024
# How long to wait for the rest of a UTF-8 character cut by a read before
# answering what arrived (an error, if the rest never comes).
SPLIT_CHAR_WAIT = 0.2

log = logging.getLogger("echo_server")


def shout(message: bytes, delay: float = 0.0) -> bytes:
    """The work, run by the executor: decode, upper-case, encode.

    Raises:
        UnicodeDecodeError: ``message`` is not UTF-8; the server turns it
            into an ``ERROR`` reply.
    """
    if delay:
        time.sleep(delay)  # stands in for real work
    return message.decode("utf-8").upper().encode("utf-8")


def one_line(text: str) -> bytes:
    """An error reply: one line, whatever the error's text holds."""
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8") + b"\n"


def not_utf8(exc: UnicodeDecodeError) -> bytes:
    return one_line(f"ERROR message is not UTF-8: {exc}")


def split_utf8(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` before a UTF-8 character its last bytes leave unfinished.

    A read can end in the middle of a multi-byte character; decoding the two
    halves apart would report valid input as an error. Returns ``(ready,
    rest)``: ``rest`` (at most 3 bytes) waits for the next read.
    """
    # Look back over at most 3 continuation bytes for the lead byte.
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the lead (or ASCII)
            needed = 2 if byte >= 0xC0 else 1
            needed = 3 if byte >= 0xE0 else needed
            needed = 4 if byte >= 0xF0 else needed
            if byte < 0x80 or needed <= back:
                return data, b""
            return data[:-back], data[-back:]
    return data, b""


# -- the asyncio design ----------------------------------------------------


class EchoServer:
    """Serves connections on an event loop; hands each read to the executor.

    Args:
        executor: Runs :func:`shout` for every piece of input.
        delay: Seconds each task sleeps, to make concurrency visible.
    """

    def __init__(self, executor: executors.Executor, delay: float) -> None:
        self.executor = executor
        self.delay = delay
        self.connections: set[asyncio.Task[None]] = set()
        self.served = 0

    async def reply_to(self, message: bytes) -> bytes:
        try:
            # Awaiting keeps the loop free for other clients; if this
            # connection's task is cancelled, the queued work is cancelled too.
            return await executors.aio.submit(self.executor, shout, message, self.delay)
        except UnicodeDecodeError as exc:
            return not_utf8(exc)
        except BrokenExecutor as exc:
            # A worker died (killed from outside, say): report it, stay up.
            log.error("the executor is broken: %s", exc)
            return one_line(f"ERROR the server's executor is broken: {exc}")

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        peer = writer.get_extra_info("peername")
        log.info("%s connected", peer)
        try:
            await self.converse(reader, writer, peer)
        except (ConnectionError, TimeoutError) as exc:
            log.info("%s: connection lost: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            if task is not None:
                self.connections.discard(task)
            log.info("%s disconnected", peer)

    async def converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: object,
    ) -> None:
        rest = b""
        while True:
            try:
                # While a character is cut in two, wait only briefly for its
                # end: a client that sent bad bytes still gets its reply.
                wait = SPLIT_CHAR_WAIT if rest else None
                data = await asyncio.wait_for(reader.read(READ_SIZE), wait)
            except asyncio.TimeoutError:
                message, rest = rest, b""
            else:
                if not data:
                    if rest:
                        log.info("%s left mid-character (%d bytes)", peer, len(rest))
                    return
                message, rest = split_utf8(rest + data)
                if not message:
                    continue
            writer.write(await self.reply_to(message))
            # Back-pressure: read no more from a client that does not read
            # its replies.
            await writer.drain()
            self.served += 1

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port)
        bound = server.sockets[0].getsockname()
        print(
            f"echo server ({self.executor.backend}, "
            f"{self.executor.max_workers} worker(s), asyncio) listening on "
            f"{bound[0]}:{bound[1]}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Not available on Windows: Ctrl-C raises KeyboardInterrupt there.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        async with server:
            await stop.wait()
            server.close()
            # Cancelling a connection cancels the work it still has queued.
            for task in list(self.connections):
                task.cancel()
            await asyncio.gather(*self.connections, return_exceptions=True)
        print(f"echo server stopped after {self.served} messages", flush=True)


# -- the classic design: one worker per connection --------------------------


def talk(conn: socket.socket, addr: Any, delay: float = 0.0) -> int:
    """Serve one connection to its end, in a worker; return the replies sent.

    The classic loop: ``recv(1024)``, answer it upper-cased, until the
    client closes. Runs in the worker that received the socket.
    """
    served = 0
    rest = b""
    with conn:
        while True:
            try:
                conn.settimeout(SPLIT_CHAR_WAIT if rest else None)
                try:
                    data = conn.recv(CLASSIC_RECV)
                except TimeoutError:
                    message, rest = rest, b""
                else:
                    if not data:
                        return served
                    message, rest = split_utf8(rest + data)
                    if not message:
                        continue
                try:
                    reply = shout(message, delay)
                except UnicodeDecodeError as exc:
                    reply = not_utf8(exc)
                conn.sendall(reply)
                served += 1
            except OSError:  # reset, broken pipe, or shut down by the server
                return served


def _probe(sock: socket.socket) -> bool:
    sock.close()
    return True


def can_pass_sockets(executor: executors.Executor) -> bool:
    """Whether the executor can hand a socket to a worker (one real try)."""
    ours, theirs = socket.socketpair()
    try:
        return bool(executor.submit(_probe, theirs).result(timeout=60))
    except (TypeError, OSError, BrokenExecutor) as exc:
        # "cannot pickle 'socket' object": this backend sends arguments
        # with a pickler that has no reducer for sockets (or across hosts).
        log.info("cannot pass a socket: %s", exc)
        return False
    except Exception as exc:
        # Other picklers raise their own types (PicklingError and kin).
        log.info("cannot pass a socket: %r", exc)
        return False
    finally:
        ours.close()
        theirs.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_classic(
    executor: executors.Executor, host: str, port: int, delay: float
) -> None:
    if not can_pass_sockets(executor):
        sys.exit(
            f"the {executor.backend!r} backend cannot pass a socket to a worker, "
            "which --mode classic needs; use --mode asyncio, or one of the "
            "backends process, mp_pool, joblib, thread, inline"
        )
    # SIGINT too, as the asyncio mode does: a server started from a script
    # in the background inherits SIGINT ignored, and would not stop on it.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    open_conns: dict[Future[int], socket.socket] = {}
    lock = threading.Lock()
    served = 0

    def finished(future: Future[int]) -> None:
        nonlocal served
        with lock:
            conn = open_conns.pop(future, None)
            if not future.cancelled() and future.exception() is None:
                served += future.result()
        if conn is not None:
            # Our copy of the socket: the worker closed its own.
            conn.close()

    with socket.create_server((host, port)) as server:
        bound = server.getsockname()
        print(
            f"echo server ({executor.backend}, {executor.max_workers} worker(s), "
            f"classic: one worker per connection) listening on "
            f"{bound[0]}:{bound[1]}",
            flush=True,
        )
        try:
            while True:
                conn, addr = server.accept()
                log.info("%s connected", addr)
                # The classic hand-over. The parent keeps its copy open until
                # the worker is done: the worker may receive it later.
                future = executor.submit(talk, conn, addr, delay)
                with lock:
                    open_conns[future] = conn
                # After the insert: a callback that runs at once finds it.
                future.add_done_callback(finished)
        except KeyboardInterrupt:
            pass
        # Each worker is blocked in recv() on a client that may never speak
        # again: shutting the socket down (not only our copy) ends its loop.
        with lock:
            conns = list(open_conns.values())
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        executor.shutdown(wait=True, cancel_futures=True)
    print(f"echo server stopped after {served} messages", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument(
        "--mode",
        choices=["asyncio", "classic"],
        default="asyncio",
        help="asyncio: one event loop for every connection (default); "
        "classic: one worker per connection",
    )
    parser.add_argument("--host", default=HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free one")
    parser.add_argument(
        "--workers", type=int, default=2, help="max_workers of the executor"
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds each task sleeps"
    )
    parser.add_argument("--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    executor = executors.create(args.backend, max_workers=args.workers)
    try:
        if args.mode == "classic":
            serve_classic(executor, args.host, args.port, args.delay)
        else:
            asyncio.run(EchoServer(executor, args.delay).serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    main()
