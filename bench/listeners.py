"""Loopback TCP or HTTP listeners in their own process, for the benchmarks.

    python bench/listeners.py COUNT [--http] [--net 127.0.2]
        -> prints `ready host:port host:port ...`

On SIGUSR1 it prints ``served N``: connections accepted (TCP) or requests
answered (HTTP) so far, over all listeners. Counting probes where they land
is the same for every prober, and costs the measured process nothing.

TCP: each accepted connection is held until the client closes it (as a real
service does with an idle client), with a deep accept backlog.

HTTP (``--http``): every request head gets a fixed ``200 OK`` with a short
body and ``Connection: close`` (a fresh connection per probe is what both
jupiterd and blackbox_exporter make). A connection that sends nothing (the
daemon's idle watch) is held until the client closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Connection: close\r\n\r\nok\n"
)
MAX_HEAD = 16 * 1024
served = 0


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global served
    served += 1
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass
    writer.transport.abort()


class Http(asyncio.Protocol):
    """One response per connection, as soon as the request head is complete."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        global served
        assert self.transport is not None
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            served += 1
            self.transport.write(RESPONSE)
            self.transport.close()  # after the write is flushed
        elif len(self.buf) > MAX_HEAD:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False


async def main(count: int, http: bool, net: str) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for i in range(count):
        host = f"{net}.{i + 1}"
        if http:
            servers.append(await loop.create_server(Http, host, 0, backlog=4096))
        else:
            servers.append(await asyncio.start_server(hold, host, 0, backlog=4096))
    addrs = [f"{net}.{i + 1}:{s.sockets[0].getsockname()[1]}" for i, s in enumerate(servers)]
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(f"served {served}", flush=True))
    print("ready " + " ".join(addrs), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("count", type=int)
    p.add_argument("--http", action="store_true", help="answer HTTP requests with 200 OK")
    p.add_argument("--net", default="127.0.2", help="listen on NET.1 .. NET.COUNT")
    a = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(a.count, a.http, a.net))
