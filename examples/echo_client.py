"""The client for ``echo_server.py``: an interactive ``>>:`` prompt.

Each line you type is sent to the server, and its reply (upper-cased by the
server's executor) is printed. An empty line is skipped; ``exit``, ``quit``
or end of input (Ctrl-D) closes the connection::

    python examples/echo_client.py --port 8888
    >>: hello
    HELLO

Messages given on the command line are sent in turn instead, which is handy
in scripts and tests::

    python examples/echo_client.py --port 8888 hello world

``--raw`` talks as the classic client does: each message is sent as it is,
with no terminator, and the reply is what one ``recv(1024)`` returns (the
server answers whatever bytes arrive, so no terminator is needed)::

    python examples/echo_client.py --port 8888 --raw hello world
"""

from __future__ import annotations

import argparse
import io
import socket


def exchange(sock: socket.socket, replies: io.BufferedReader, message: str) -> str:
    """Send one message and return the server's reply."""
    sock.sendall(message.encode("utf-8") + b"\n")
    reply = replies.readline()
    if not reply.endswith(b"\n"):
        raise ConnectionError("the server closed the connection")
    return reply[:-1].decode("utf-8", errors="replace")


def exchange_raw(sock: socket.socket, message: str) -> str:
    """The classic exchange: ``send`` the bytes, then one ``recv(1024)``."""
    sock.send(message.encode("utf-8"))
    reply = sock.recv(1024)
    if not reply:
        raise ConnectionError("the server closed the connection")
    return reply.decode("utf-8", errors="replace")


def interactive(sock: socket.socket, replies: io.BufferedReader) -> None:
    while True:
        try:
            text = input(">>: ").strip()
        except EOFError:
            print()
            return
        if not text:
            continue
        if text in ("exit", "quit"):
            return
        print(exchange(sock, replies, text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=int, default=8888, help="server port")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a reply"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="send each message with no terminator and read one recv(1024)",
    )
    parser.add_argument("messages", nargs="*", help="send these instead of asking")
    args = parser.parse_args(argv)
    with socket.create_connection((args.host, args.port), args.timeout) as sock:
        replies = sock.makefile("rb")
        if args.messages and args.raw:
            for message in args.messages:
                print(exchange_raw(sock, message))
        elif args.messages:
            for message in args.messages:
                print(exchange(sock, replies, message))
        else:
            interactive(sock, replies)


if __name__ == "__main__":
    main()
