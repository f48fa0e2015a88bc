"""A TCP echo server whose work is done by an executor, on any backend.

The classic "socket server backed by a process pool", rebuilt on asyncio:
the event loop serves every connection at once, and each message is
upper-cased by a task on the executor, so a slow task never blocks the other
clients (except on ``inline``, which runs each task in the caller: there the
loop waits for each task, and the server still works, one task at a time).

Protocol: a message is one line of UTF-8 text ending in ``\\n``; the reply is
the same line upper-cased. Bad input never stops the server:

* an empty line gets an empty reply;
* bytes that are not UTF-8 get a one-line ``ERROR ...`` reply (the
  ``UnicodeDecodeError`` raised in the worker comes back unchanged);
* a line longer than ``MAX_MESSAGE`` bytes gets an ``ERROR`` reply and the
  connection is closed;
* a client that disconnects mid-message, or before its reply is sent, only
  ends its own connection.

Run it, then talk to it with ``examples/echo_client.py``::

    python examples/echo_server.py --backend process --port 8888
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
import time
from concurrent.futures import BrokenExecutor

import executors
import executors.aio

HOST = "127.0.0.1"
# Longest accepted line: bounds the memory one client can make us hold.
MAX_MESSAGE = 64 * 1024
# How long a connection closed for a too-long line keeps draining input.
LINGER_SECONDS = 2.0

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
    """An error reply that cannot break the one-line-per-message framing."""
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8") + b"\n"


class EchoServer:
    """Serves connections; hands each message to the executor.

    Args:
        executor: Runs :func:`shout` for every message.
        delay: Seconds each task sleeps, to make concurrency visible.
    """

    def __init__(self, executor: executors.BaseExecutor, delay: float) -> None:
        self.executor = executor
        self.delay = delay
        self.connections: set[asyncio.Task[None]] = set()
        self.served = 0

    async def reply_to(self, message: bytes) -> bytes:
        try:
            # Awaiting keeps the loop free for other clients; if this
            # connection's task is cancelled, the queued work is cancelled too.
            result = await executors.aio.submit(
                self.executor, shout, message, self.delay
            )
        except UnicodeDecodeError as exc:
            return one_line(f"ERROR message is not UTF-8: {exc}")
        except BrokenExecutor as exc:
            # A worker died (killed from outside, say): report it, stay up.
            log.error("the executor is broken: %s", exc)
            return one_line(f"ERROR the server's executor is broken: {exc}")
        return result + b"\n"

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
            log.info("%s connection lost: %s", peer, exc)
        except Exception:
            # Whatever went wrong, it ends this connection, not the server.
            log.exception("%s unexpected error", peer)
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            log.info("%s disconnected", peer)

    async def converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: object,
    ) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.info(
                        "%s disconnected mid-message (%d bytes dropped)",
                        peer,
                        len(exc.partial),
                    )
                return
            except asyncio.LimitOverrunError:
                writer.write(one_line(f"ERROR message longer than {MAX_MESSAGE} bytes"))
                await writer.drain()
                await self.linger(reader, writer)
                return
            message = line[:-1]
            if message.endswith(b"\r"):  # telnet and nc -C send CRLF
                message = message[:-1]
            writer.write(await self.reply_to(message))
            await writer.drain()
            self.served += 1

    async def linger(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Half-close, and discard what the client still sends for a while.

        Closing a socket with unread input makes the kernel reset the
        connection, and a reset can destroy the error reply before the
        client reads it. Reading the rest first lets the reply arrive.
        """

        async def discard() -> None:
            while await reader.read(MAX_MESSAGE):
                pass

        writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(discard(), LINGER_SECONDS)

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port, limit=MAX_MESSAGE)
        bound = server.sockets[0].getsockname()
        print(
            f"echo server ({self.executor.backend}, "
            f"{self.executor.max_workers} worker(s)) listening on "
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--backend", default="process", help="backend name")
    parser.add_argument("--host", default=HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free one")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds each task sleeps"
    )
    parser.add_argument("--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    # inline runs every task in the caller: it takes no pool size above 1.
    options = {} if args.backend == "inline" else {"max_workers": 2}
    executor = executors.create(args.backend, **options)
    try:
        asyncio.run(EchoServer(executor, args.delay).serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


if __name__ == "__main__":
    main()
