"""Peers as processes for the benchmarks (their CPU is then not counted in
the probing process): the same runner the tests use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.peers.process import node_peer, peer, python_peer


@contextlib.contextmanager
def spawn(cmd: list[str], timeout: float = 20.0) -> Iterator[str]:
    """Yield the address (or addresses) a peer printed after `ready`."""
    with peer(cmd, timeout) as p:
        yield " ".join(p.addresses)


def py(script: str, *args: str) -> list[str]:
    return python_peer(script, *args)


def node_sio(*args: str) -> list[str]:
    return node_peer("sio_server.js", *args)
