"""A peer that never goes silent and never finishes: it sends a plausible
start and then one byte at a time, forever. Read timeouts that restart on
every byte would never fire; each probe must still end within its own
timeout, with a failed result and nothing raised."""

from __future__ import annotations

import struct
import time

import pytest

import probes
from probes import Reason as R
from tests.peers import hostile

FRP_HEAD = b"1" + (200).to_bytes(8, "big")
HTTP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
TIMEOUT = 0.6

CASES = [
    # kind, options, what the peer sends first, what it then drips forever
    ("http", {}, HTTP_HEAD, b"X-Pad: y\r\n"),
    ("http", {}, HTTP_HEAD + b"Content-Length: 100000\r\n\r\n", b"a"),
    ("http", {}, HTTP_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n"),
    ("thingsboard", {}, HTTP_HEAD, b"X-Pad: y\r\n"),
    ("socketio", {"transport": "polling"}, HTTP_HEAD, b"X-Pad: y\r\n"),
    (
        "socketio",
        {"transport": "polling"},
        HTTP_HEAD + b"Content-Length: 100000\r\n\r\n",
        b'0{"sid":"a"}',
    ),
    # a STUN header announcing a 256-byte body that never completes
    ("stun", {"transport": "tcp"}, b"\x01\x01\x01\x00\x21\x12\xa4\x42", b"\x00"),
    ("turn", {"transport": "tcp"}, b"\x01\x13\x01\x00\x21\x12\xa4\x42", b"\x00"),
    # frp: a LoginResp ('1') announcing 200 bytes of JSON, plain and in yamux stream 1
    ("frp", {"mux": False}, FRP_HEAD, b" "),
    ("frp", {"mux": True}, struct.pack("!BBHII", 0, 0, 2, 1, 209) + FRP_HEAD, b" "),
]


@pytest.mark.parametrize(
    "kind,options,head,body",
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
async def test_a_dripping_peer_ends_within_the_timeout(kind, options, head, body):
    async with hostile.drip_tcp(head, body) as (host, port):
        t0 = time.monotonic()
        result = await probes.run(kind, f"{host}:{port}", options, TIMEOUT)
        took = time.monotonic() - t0
    assert not result.ok, result
    assert result.reason == R.TIMEOUT, result
    assert result.duration_seconds <= TIMEOUT + 0.25, result
    assert took < TIMEOUT + 1.0, took
