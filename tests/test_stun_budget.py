"""STUN over UDP under loss: the retransmission schedule fits the default
1 s probe budget (sends at 0, 0.1, 0.3 and 0.7 s), and the probe keeps
listening until its deadline for an answer to a request already sent.
Answers are built with aioice, never with the codec under test."""

from __future__ import annotations

import asyncio
import time

from aioice import stun as aio

import probes
from tests.peers import hostile

Reason = probes.Reason


def mapped_ok(request: bytes) -> bytes:
    msg = aio.Message(aio.Method.BINDING, aio.Class.RESPONSE, transaction_id=request[8:20])
    msg.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", 4000)
    return bytes(msg)


async def test_silent_peer_gets_four_sends_and_the_whole_budget():
    seen: list[float] = []
    started = time.monotonic()

    def note(data: bytes) -> bytes:
        seen.append(time.monotonic() - started)
        return b""

    async with hostile.udp_responder(note) as (host, port):
        result = await probes.run("stun", f"{host}:{port}", {}, 1.0)
    assert result.reason == Reason.TIMEOUT, result
    assert result.facts["requests_sent"] == 4 == len(seen), seen
    assert "4 requests sent" in result.detail
    # It waited for answers to the last send until the deadline, not giving up early.
    assert 0.9 <= result.duration_seconds < 1.2, result.duration_seconds


async def test_a_late_answer_to_the_last_send_is_still_taken():
    count = 0
    loop = asyncio.get_running_loop()
    answered: list[asyncio.TimerHandle] = []

    class Late(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            nonlocal count
            count += 1
            if count == 4:  # the first three are "lost"; the fourth is answered late
                answered.append(loop.call_later(0.1, self.transport.sendto, mapped_ok(data), addr))

    transport, _ = await loop.create_datagram_endpoint(Late, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await probes.run("stun", f"127.0.0.1:{port}", {}, 1.0)
    finally:
        transport.close()
    assert result.ok, result
    assert result.facts["requests_sent"] == 4
    assert result.duration_seconds > 0.75


async def test_turn_absorbs_a_lost_request_in_each_of_its_transactions():
    """Allocate, authenticated Allocate, Refresh: each first send lost, every
    retransmission answered, all inside the 1 s budget."""
    from jupiterd.sandbox.peers.coturn import coturn
    from tests.conftest import need

    need("turnserver")
    with coturn(secret="s") as server:
        seen: dict[bytes, int] = {}
        loop = asyncio.get_running_loop()
        client: list[tuple[str, int]] = []
        front: list[asyncio.DatagramTransport] = []

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                front[0].sendto(data, client[-1])

        class DropFirst(asyncio.DatagramProtocol):
            """Forwards to coturn, dropping the first send of every transaction."""

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                txid = data[8:20]
                seen[txid] = seen.get(txid, 0) + 1
                if seen[txid] > 1:
                    client.append(addr)
                    back.sendto(data)

        back, _ = await loop.create_datagram_endpoint(Back, remote_addr=(server.host, server.port))
        transport, _ = await loop.create_datagram_endpoint(DropFirst, local_addr=("127.0.0.1", 0))
        front.append(transport)
        try:
            port = transport.get_extra_info("sockname")[1]
            result = await probes.run("turn", f"127.0.0.1:{port}", {"secret": "s"}, 1.0)
        finally:
            transport.close()
            back.close()
    assert result.ok, result
    assert len(seen) == 3 and set(seen.values()) == {2}, seen
