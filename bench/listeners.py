"""Loopback TCP listeners in their own process, for the scale benchmarks.

    python bench/listeners.py COUNT   -> prints `ready host:port host:port ...`

Each accepted connection is held until the client closes it (as a real
service does with an idle client), with a deep accept backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        pass
    writer.transport.abort()


async def main(count: int) -> None:
    servers = [
        await asyncio.start_server(handle, f"127.0.2.{i + 1}", 0, backlog=4096)
        for i in range(count)
    ]
    addrs = [f"127.0.2.{i + 1}:{s.sockets[0].getsockname()[1]}" for i, s in enumerate(servers)]
    print("ready " + " ".join(addrs), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1])))
